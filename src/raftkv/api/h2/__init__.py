"""An HTTP/2 gRPC front end written on asyncio (experimental; see server.py)."""
