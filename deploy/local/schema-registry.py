#!/usr/bin/env python3
"""A small in-memory Confluent-compatible schema registry, for the tests and the demo.

NOT for production: state is in memory only, AVRO is the only schema type, no
schema references, no Kafka store, no clustering, no ACLs. Standard library only.
It follows Confluent's REST API: `application/vnd.schemaregistry.v1+json`
responses, errors `{"error_code": N, "message": "..."}` with Confluent's codes
(40401 subject, 40402 version, 40403 schema, 40408 subject config not found;
409 incompatible; 42201 invalid schema, 42202 invalid version, 42203 invalid level).

Endpoints:
  GET    /  /schemas/types  /mode  /subjects  /schemas/ids/{id}[/schema|/subjects|/versions]
  POST   /subjects/{subject}                  look a schema up in a subject
  DELETE /subjects/{subject}                  (soft and hard delete are the same)
  GET    /subjects/{subject}/versions
  POST   /subjects/{subject}/versions         register
  GET    /subjects/{subject}/versions/{v}[/schema|/referencedby]   v = 1.. | latest | -1
  DELETE /subjects/{subject}/versions/{v}
  POST   /compatibility/subjects/{subject}/versions[/{v}]   (?verbose=true adds messages)
  GET|PUT /config        GET|PUT|DELETE /config/{subject}   (?defaultToGlobal=true)
Compatibility (levels NONE, BACKWARD, FORWARD, FULL and their _TRANSITIVE forms)
follows Avro schema resolution; logical types are ignored.

Usage: schema-registry.py [--host 127.0.0.1] [--port 8081] [--basic-auth USER:PASS]
                          [--tls-cert FILE --tls-key FILE] [--quiet]
"""
import argparse
import base64
import hmac
import json
import re
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
REQUEST_TYPES = {"", CONTENT_TYPE, "application/vnd.schemaregistry+json",
                 "application/json", "application/octet-stream"}
LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE")
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"},
              "float": {"double"}, "string": {"bytes"}, "bytes": {"string"}}
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_VERSION = 2**31 - 1


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class InvalidSchema(Exception):
    pass


def need(condition, message):
    if not condition:
        raise InvalidSchema(message)


def is_latest(version):
    return version.strip().lower() in ("latest", "-1")


def not_found():
    return ApiError(404, 404, "HTTP 404 Not Found")


# ---------------------------------------------------------------- Avro parsing
# A parsed schema is a dict with "type": a primitive name, "record", "enum",
# "fixed", "array", "map" or "union". Named types are shared (recursion allowed).

def parse_avro(text):
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        raise InvalidSchema(f"not valid JSON: {e}") from None
    return doc, _parse(doc, "", {})


def _name(name, namespace, enclosing):
    need(isinstance(name, str), f"name must be a string, got {json.dumps(name)}")
    if "." in name:
        space, _, simple = name.rpartition(".")
    else:
        space, simple = (enclosing if namespace is None else namespace), name
    need(isinstance(space, str), f"namespace must be a string, got {json.dumps(space)}")
    need(all(NAME_RE.match(p) for p in (space.split(".") if space else []) + [simple]),
         f"invalid name: {name!r}")
    need(space or simple not in PRIMITIVES, f"can't redefine the primitive type {simple}")
    return (f"{space}.{simple}" if space else simple), space, simple


def _parse(s, ns, names):
    if isinstance(s, str):
        if s in PRIMITIVES:
            return {"type": s}
        full = s if "." in s or not ns else f"{ns}.{s}"
        need(full in names or s in names, f"undefined name: {s!r}")
        return names.get(full) or names[s]
    if isinstance(s, list):
        branches = [_parse(b, ns, names) for b in s]
        need(all(b["type"] != "union" for b in branches), "unions may not contain unions")
        keys = [b.get("name", b["type"]) for b in branches]
        need(len(set(keys)) == len(keys), f"duplicate type in union: {keys}")
        return {"type": "union", "branches": branches}
    need(isinstance(s, dict) and isinstance(s.get("type"), str), f"no type: {json.dumps(s)}")
    t = s["type"]
    if t in PRIMITIVES:  # logicalType and other attributes do not change the type
        return {"type": t}
    if t in ("array", "map"):
        key = "items" if t == "array" else "values"
        need(key in s, f"{t} has no {key}")
        return {"type": t, key: _parse(s[key], ns, names)}
    if t not in ("record", "error", "enum", "fixed"):
        return _parse(t, ns, names)  # {"type": "SomeNamedType"}
    full, space, simple = _name(s.get("name"), s.get("namespace"), ns)
    need(full not in names, f"can't redefine: {full}")
    aliases = s.get("aliases", [])
    need(isinstance(aliases, list), "aliases must be a list")
    node = {"type": "record" if t == "error" else t, "name": full, "simple": simple,
            "aliases": {_name(a, None, space)[0] for a in aliases}}
    names[full] = node
    if t == "fixed":
        size = node["size"] = s.get("size")
        need(isinstance(size, int) and not isinstance(size, bool) and size >= 0,
             f"fixed {full} needs a non-negative integer size")
    elif t == "enum":
        symbols = node["symbols"] = s.get("symbols")
        need(isinstance(symbols, list) and all(isinstance(x, str) and NAME_RE.match(x)
                                               for x in symbols),
             f"enum {full} needs a list of valid symbols")
        need(len(set(symbols)) == len(symbols), f"enum {full} has duplicate symbols")
        need("default" not in s or s["default"] in symbols, f"enum {full} bad default")
        node["default"] = s.get("default")
    else:
        fields = s.get("fields")
        need(isinstance(fields, list), f"record {full} needs a list of fields")
        node["fields"] = []
        for f in fields:
            need(isinstance(f, dict) and isinstance(f.get("name"), str)
                 and NAME_RE.match(f["name"]), f"invalid field in {full}: {json.dumps(f)}")
            need(f["name"] not in {g["name"] for g in node["fields"]},
                 f"duplicate field {f['name']} in {full}")
            need("type" in f, f"field {f['name']} in {full} has no type")
            ftype = _parse(f["type"], space, names)
            need("default" not in f or valid_default(ftype, f["default"]),
                 f"invalid default for field {f['name']} in {full}: {json.dumps(f.get('default'))}")
            fa = f.get("aliases", [])
            node["fields"].append({"name": f["name"], "type": ftype, "has_default": "default" in f,
                                   "aliases": set(fa) if isinstance(fa, list) else set()})
    return node


def valid_default(node, v):
    t, integral = node["type"], isinstance(v, int) and not isinstance(v, bool)
    if t in ("array", "map"):
        return isinstance(v, list) and all(valid_default(node["items"], x) for x in v) \
            if t == "array" else \
            isinstance(v, dict) and all(valid_default(node["values"], x) for x in v.values())
    if t == "union":  # the Avro spec: a union's default is for its first branch
        return valid_default(node["branches"][0], v)
    if t == "record":
        return isinstance(v, dict) and all(
            valid_default(f["type"], v[f["name"]]) if f["name"] in v else f["has_default"]
            for f in node["fields"])
    return {"null": v is None, "boolean": isinstance(v, bool),
            "int": integral and -2**31 <= v < 2**31, "long": integral and -2**63 <= v < 2**63,
            "float": integral or isinstance(v, float), "double": integral or isinstance(v, float),
            "bytes": isinstance(v, str), "string": isinstance(v, str), "fixed": isinstance(v, str),
            "enum": t == "enum" and v in node["symbols"]}[t]


def describe(node):
    return node.get("name", node["type"])


def incompatibilities(reader, writer, path="/", seen=None):
    """Why `reader` cannot read data written with `writer` (Avro resolution); [] if it can."""
    seen = set() if seen is None else seen
    if writer["type"] == "union":
        return [p for b in writer["branches"] for p in incompatibilities(reader, b, path, seen)]
    if reader["type"] == "union":
        if any(not incompatibilities(b, writer, path, seen) for b in reader["branches"]):
            return []
        return [f"{path}: no branch of the reader's union can read the writer's {describe(writer)}"]
    rt, wt = reader["type"], writer["type"]
    if rt != wt:
        return [] if rt in PROMOTIONS.get(wt, ()) else \
            [f"{path}: reader type {describe(reader)} cannot read writer type {describe(writer)}"]
    if rt in PRIMITIVES:
        return []
    if rt == "array":
        return incompatibilities(reader["items"], writer["items"], path + "items/", seen)
    if rt == "map":
        return incompatibilities(reader["values"], writer["values"], path + "values/", seen)
    if reader["simple"] != writer["simple"] and writer["name"] not in reader["aliases"]:
        return [f"{path}: reader name {reader['name']} does not match writer name {writer['name']}"]
    if rt == "fixed":
        return [f"{path}: fixed size {reader['size']} cannot read size {writer['size']}"] \
            if reader["size"] != writer["size"] else []
    if rt == "enum":
        missing = [x for x in writer["symbols"] if x not in reader["symbols"]]
        return [f"{path}: reader enum {reader['name']} lacks symbols {missing}"] \
            if missing and reader["default"] is None else []
    if (id(reader), id(writer)) in seen:  # recursive types: assume compatible
        return []
    seen.add((id(reader), id(writer)))
    by_name, problems = {f["name"]: f for f in writer["fields"]}, []
    for f in reader["fields"]:
        match = by_name.get(f["name"]) or next(
            (by_name[a] for a in sorted(f["aliases"]) if a in by_name), None)
        if match is not None:
            problems += incompatibilities(f["type"], match["type"], f"{path}{f['name']}/", seen)
        elif not f["has_default"]:
            problems.append(f"{path}{f['name']}: reader field {f['name']} is missing from "
                            f"the writer and has no default")
    return problems


def check_level(level, new, olds):
    """Problems registering `new` under `level` after `olds` (oldest first)."""
    if level == "NONE":
        return []
    problems = []
    for old in (olds if level.endswith("_TRANSITIVE") else olds[-1:]):
        if level.startswith(("BACKWARD", "FULL")):
            problems += incompatibilities(new, old)
        if level.startswith(("FORWARD", "FULL")):
            problems += incompatibilities(old, new)
    return problems


# ---------------------------------------------------------------- the registry

class Registry:
    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = {}      # id -> (canonical, schema string, parsed)
        self.by_canonical = {}  # canonical -> id
        self.subjects = {}     # subject -> [(version, id)], oldest first, never empty
        self.global_level = "BACKWARD"
        self.subject_levels = {}

    def level(self, subject):
        return self.subject_levels.get(subject, self.global_level)

    def versions(self, subject):
        if subject not in self.subjects:
            raise ApiError(404, 40401, f"Subject '{subject}' not found.")
        return self.subjects[subject]

    def version(self, subject, v):
        versions = self.versions(subject)
        if is_latest(v):
            return versions[-1]
        n = int(v) if re.fullmatch(r"\d{1,10}", v) else 0
        if not 1 <= n <= MAX_VERSION:
            raise ApiError(422, 42202, f"The specified version '{v}' is not a valid version id. "
                           "Allowed values are between [1, 2^31-1] and the string \"latest\"")
        for entry in versions:
            if entry[0] == n:
                return entry
        raise ApiError(404, 40402, f"Version {n} not found.")

    def schema_id(self, s):
        if not re.fullmatch(r"-?\d{1,19}", s):
            raise not_found()
        n = int(s)
        if n not in self.schemas:
            raise ApiError(404, 40403, f"Schema {n} not found")
        return n

    def entry(self, subject, version, sid):
        return {"subject": subject, "version": version, "id": sid, "schema": self.schemas[sid][1]}

    @staticmethod
    def body_schema(body):
        if body.get("schemaType", "AVRO") != "AVRO":
            raise ApiError(422, 42201, f"Invalid schema type {body.get('schemaType')}: "
                           "this test registry supports AVRO only")
        if body.get("references"):
            raise ApiError(422, 42201, "Schema references are not supported by this test registry")
        text = body.get("schema")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(422, 42201, "Empty schema")
        try:
            doc, parsed = parse_avro(text)
        except InvalidSchema as e:
            raise ApiError(422, 42201, f"Invalid schema {text}, details: {e}") from None
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return canonical, json.dumps(doc, separators=(",", ":")), parsed

    @staticmethod
    def parse_level(body):
        level = body.get("compatibility")
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise ApiError(422, 42203, "Invalid compatibility level. Valid values are none, "
                           "backward, forward, full, backward_transitive, forward_transitive, "
                           "and full_transitive")
        return level.upper()

    # Handlers: (path arguments, query dict, JSON body) -> JSON-able result.
    def id_versions(self, a, q, b):
        sid = self.schema_id(a[0])
        return [{"subject": s, "version": v} for s, vs in sorted(self.subjects.items())
                for v, i in vs if i == sid]

    def lookup(self, a, q, b):
        canonical = self.body_schema(b)[0]
        for v, sid in self.versions(a[0]):
            if self.schemas[sid][0] == canonical:
                return self.entry(a[0], v, sid)
        raise ApiError(404, 40403, "Schema not found")

    def register(self, a, q, b):
        subject = a[0]
        canonical, text, parsed = self.body_schema(b)
        versions = self.subjects.get(subject, [])
        for _, sid in versions:
            if self.schemas[sid][0] == canonical:
                return {"id": sid}
        problems = check_level(self.level(subject), parsed,
                               [self.schemas[sid][2] for _, sid in versions])
        if problems:
            raise ApiError(409, 409, "Schema being registered is incompatible with an earlier "
                           f"schema for subject \"{subject}\", details: {problems}")
        sid = self.by_canonical.get(canonical)
        if sid is None:
            sid = max(self.schemas, default=0) + 1
            self.schemas[sid] = (canonical, text, parsed)
            self.by_canonical[canonical] = sid
        self.subjects[subject] = versions + [((versions[-1][0] + 1) if versions else 1, sid)]
        return {"id": sid}

    def delete_version(self, a, q, b):
        entry = self.version(a[0], a[1])
        self.subjects[a[0]].remove(entry)
        if not self.subjects[a[0]]:
            del self.subjects[a[0]]
        return entry[0]

    def compatibility(self, a, q, b):
        subject, v = a[0], (a[1] if len(a) > 1 else "latest")
        parsed = self.body_schema(b)[2]
        if is_latest(v):  # a subject without versions accepts anything
            olds = [self.schemas[sid][2] for _, sid in self.subjects.get(subject, [])]
        else:
            olds = [self.schemas[self.version(subject, v)[1]][2]]
        problems = check_level(self.level(subject), parsed, olds)
        result = {"is_compatible": not problems}
        if q.get("verbose", "").lower() == "true":
            result["messages"] = problems
        return result

    def put_global_config(self, a, q, b):
        self.global_level = self.parse_level(b)
        return {"compatibility": self.global_level}

    def get_subject_config(self, a, q, b):
        if a[0] in self.subject_levels:
            return {"compatibilityLevel": self.subject_levels[a[0]]}
        if q.get("defaultToGlobal", "").lower() == "true":
            return {"compatibilityLevel": self.global_level}
        raise ApiError(404, 40408, f"Subject '{a[0]}' does not have subject-level "
                       "compatibility configured")

    def put_subject_config(self, a, q, b):
        self.subject_levels[a[0]] = self.parse_level(b)
        return {"compatibility": self.subject_levels[a[0]]}

    def delete_subject_config(self, a, q, b):
        if a[0] not in self.subject_levels and a[0] not in self.subjects:
            raise ApiError(404, 40401, f"Subject '{a[0]}' not found.")
        return {"compatibilityLevel": self.subject_levels.pop(a[0], self.global_level)}


R = Registry
ROUTES = [  # (method, path pattern with * for a parameter, handler(registry, args, query, body))
    ("GET", "", lambda r, a, q, b: {}),
    ("GET", "schemas/types", lambda r, a, q, b: ["AVRO"]),
    ("GET", "mode", lambda r, a, q, b: {"mode": "READWRITE"}),
    ("GET", "schemas/ids/*", lambda r, a, q, b: {"schema": r.schemas[r.schema_id(a[0])][1]}),
    ("GET", "schemas/ids/*/schema", lambda r, a, q, b: json.loads(r.schemas[r.schema_id(a[0])][1])),
    ("GET", "schemas/ids/*/versions", R.id_versions),
    ("GET", "schemas/ids/*/subjects",
     lambda r, a, q, b: sorted({x["subject"] for x in r.id_versions(a, q, b)})),
    ("GET", "subjects", lambda r, a, q, b: sorted(r.subjects)),
    ("POST", "subjects/*", R.lookup),
    ("DELETE", "subjects/*",
     lambda r, a, q, b: [v for v, _ in r.subjects.pop(a[0], None) or r.versions(a[0])]),
    ("GET", "subjects/*/versions", lambda r, a, q, b: [v for v, _ in r.versions(a[0])]),
    ("POST", "subjects/*/versions", R.register),
    ("GET", "subjects/*/versions/*", lambda r, a, q, b: r.entry(a[0], *r.version(a[0], a[1]))),
    ("DELETE", "subjects/*/versions/*", R.delete_version),
    ("GET", "subjects/*/versions/*/schema",
     lambda r, a, q, b: json.loads(r.schemas[r.version(a[0], a[1])[1]][1])),
    ("GET", "subjects/*/versions/*/referencedby", lambda r, a, q, b: r.version(a[0], a[1]) and []),
    ("POST", "compatibility/subjects/*/versions", R.compatibility),
    ("POST", "compatibility/subjects/*/versions/*", R.compatibility),
    ("GET", "config", lambda r, a, q, b: {"compatibilityLevel": r.global_level}),
    ("PUT", "config", R.put_global_config),
    ("GET", "config/*", R.get_subject_config),
    ("PUT", "config/*", R.put_subject_config),
    ("DELETE", "config/*", R.delete_subject_config),
]


def route(method, segments):
    """(handler, path arguments); ApiError 404/405 if nothing matches."""
    path_matched = False
    for m, pattern, handler in ROUTES:
        parts = pattern.split("/") if pattern else []
        if len(parts) == len(segments) and all(p in ("*", s) for p, s in zip(parts, segments)):
            path_matched = True
            if m == method:
                return handler, [s for p, s in zip(parts, segments) if p == "*"]
    if path_matched:
        raise ApiError(405, 405, "HTTP 405 Method Not Allowed")
    raise not_found()


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kaflowsql-test-schema-registry"
    timeout = 60

    def handle_api(self):
        method = self.command
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            self.check_auth()
            url = urllib.parse.urlsplit(self.path)
            segments = [urllib.parse.unquote(s) for s in url.path.strip("/").split("/") if s]
            query = dict(urllib.parse.parse_qsl(url.query))
            handler, args = route(method, segments)
            body = {}
            if method in ("POST", "PUT"):
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if ctype not in REQUEST_TYPES:
                    raise ApiError(415, 415, "HTTP 415 Unsupported Media Type")
                try:
                    body = json.loads(raw.decode("utf-8"))
                except ValueError as e:
                    raise ApiError(400, 400, f"Unrecognized request body: {e}") from None
                if not isinstance(body, dict):
                    raise ApiError(400, 400, "The request body must be a JSON object")
            registry = self.server.registry
            with registry.lock:
                status, result = 200, handler(registry, args, query, body)
        except ApiError as e:
            status, result = e.status, {"error_code": e.code, "message": e.message}
        except Exception as e:  # noqa: BLE001 -- report, keep serving
            self.log_message("internal error: %r", e)
            status, result = 500, {"error_code": 500, "message": f"Internal Server Error: {e}"}
        data = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_api

    def check_auth(self):
        expected = self.server.basic_auth
        if expected is None:
            return
        got = self.headers.get("Authorization") or ""
        want = "Basic " + base64.b64encode(expected.encode()).decode()
        if not hmac.compare_digest(got.encode(), want.encode()):
            raise ApiError(401, 401, "Unauthorized")

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            sys.stderr.write(f"schema-registry: {self.address_string()} {fmt % args}\n")
            sys.stderr.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:  # the TLS handshake happens in the request thread
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        if not self.quiet:
            sys.stderr.write(f"schema-registry: {client_address[0]}: {sys.exc_info()[1]!r}\n")


def make_server(host="127.0.0.1", port=8081, basic_auth=None, tls_cert=None, tls_key=None,
                quiet=False):
    """A Server (not yet serving); call serve_forever(). port=0 picks a free port."""
    server = Server((host, port), Handler)
    server.registry, server.basic_auth, server.quiet = Registry(), basic_auth, quiet
    server.ssl_context = None
    if tls_cert:
        server.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.ssl_context.load_cert_chain(tls_cert, tls_key)
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--basic-auth", metavar="USER:PASS")
    ap.add_argument("--tls-cert", metavar="FILE")
    ap.add_argument("--tls-key", metavar="FILE")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args(argv)
    if (args.basic_auth is not None and ":" not in args.basic_auth) \
            or bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--basic-auth needs USER:PASS; --tls-cert and --tls-key go together")
    server = make_server(args.host, args.port, args.basic_auth, args.tls_cert, args.tls_key,
                         args.quiet)
    scheme = "https" if args.tls_cert else "http"
    host, port = server.server_address[:2]
    print(f"schema-registry: listening on {scheme}://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
