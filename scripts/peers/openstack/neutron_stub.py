# A stand-in for Neutron (NOT a real Neutron), for scripts/peers/openstack.sh: Nova's API needs a
# "network" endpoint in the catalog even for servers created with "networks": "none", and asks it
# for ports, security groups and quotas when it shows, lists and deletes servers. Every GET of a
# collection answers an empty list, DELETE answers 204, anything else 404/501.
#   python3 neutron_stub.py PORT
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 25005


class H(BaseHTTPRequestHandler):
    def _send(self, code, body):
        b = b'' if code == 204 else json.dumps(body).encode()
        self.send_response(code)
        if b:
            self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        p = self.path.split('?')[0].rstrip('/')
        if p in ('', '/'):
            return self._send(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": "http://127.0.0.1:%d/v2.0/" % PORT}]}]})
        m = re.match(r'^/v2\.0/([a-z\-_]+?)(?:\.json)?$', p)
        if m:
            return self._send(200, {m.group(1).replace('-', '_'): []})
        if p.startswith('/v2.0/quotas/'):
            return self._send(200, {"quota": {"port": -1, "network": -1, "subnet": -1, "security_group": -1}})
        self._send(404, {"NeutronError": {"type": "NotFound", "message": p, "detail": ""}})

    def do_DELETE(self):
        self._send(204, None)

    def log_message(self, fmt, *args):  # one line per request on stderr (the stub's log)
        sys.stderr.write("%s %s\n" % (self.command, self.path))


ThreadingHTTPServer(('127.0.0.1', PORT), H).serve_forever()
