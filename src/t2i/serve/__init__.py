"""`t2i serve`: trained runs behind a REST API and a web page (`t2i.serve.app`)."""
