"""A tenant's app for the runtime: answers HTTP on the socket the runtime
gives it ($BULKHEAD_SOCKET), saying which tenant it serves and which Unix
user it runs as. Knows nothing about other tenants."""

import os
import socketserver
from http.server import BaseHTTPRequestHandler


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = "hello from {}'s app, running as uid {}, for {}\n".format(
            os.environ["BULKHEAD_TENANT"], os.getuid(), self.headers.get("x-bulkhead-subject", "?")
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "gateway"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


server = Server(os.environ["BULKHEAD_SOCKET"], Hello)
print("serving on", os.environ["BULKHEAD_SOCKET"], flush=True)
server.serve_forever()
