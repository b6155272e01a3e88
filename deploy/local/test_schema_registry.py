#!/usr/bin/env python3
"""Tests of the test schema registry (deploy/local/schema-registry.py).

Run: python3 deploy/local/test_schema_registry.py   (standard library only, a few seconds)
"""
import base64
import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_PY = os.path.join(HERE, "schema-registry.py")
_spec = importlib.util.spec_from_file_location("schema_registry", SERVER_PY)
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)

CT = "application/vnd.schemaregistry.v1+json"


def record(name="User", fields=(("id", "long"),), namespace="demo", defaults=None):
    """An Avro record schema string; defaults maps a field name to its default."""
    defaults = defaults or {}
    return json.dumps({"type": "record", "name": name, "namespace": namespace, "fields": [
        {"name": n, "type": t, **({"default": defaults[n]} if n in defaults else {})}
        for n, t in fields]})


def start(**kwargs):
    server = sr.make_server(port=0, quiet=True, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


class Client:
    def __init__(self, base, context=None, auth=None):
        self.base, self.auth = base, auth
        handlers = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def call(self, method, path, body=None, content_type=CT, raw=None):
        """(status, decoded JSON body, headers)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Accept": CT}
        if content_type is not None and data is not None:
            headers["Content-Type"] = content_type
        if self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read()), resp.headers
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers


class RegistryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = start()
        cls.client = Client(f"http://127.0.0.1:{cls.server.server_address[1]}")

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)

    def setUp(self):
        self.server.registry = sr.Registry()  # every test starts from an empty registry

    def call(self, *args, **kwargs):
        return self.client.call(*args, **kwargs)

    def ok(self, method, path, body=None, **kwargs):
        status, result, headers = self.call(method, path, body, **kwargs)
        self.assertEqual(status, 200, result)
        self.assertEqual(headers["Content-Type"], CT)
        return result

    def error(self, status, code, method, path, body=None, **kwargs):
        got_status, result, headers = self.call(method, path, body, **kwargs)
        self.assertEqual((got_status, result.get("error_code")), (status, code), result)
        self.assertIsInstance(result.get("message"), str)
        self.assertEqual(headers["Content-Type"], CT)
        return result

    def register(self, subject, schema):
        return self.ok("POST", f"/subjects/{subject}/versions", {"schema": schema})["id"]

    # ------------------------------------------------------------ endpoints
    def test_register_and_read_back(self):
        schema = record()
        sid = self.register("orders-value", schema)
        self.assertEqual(sid, 1)
        self.assertEqual(json.loads(self.ok("GET", f"/schemas/ids/{sid}")["schema"]),
                         json.loads(schema))
        self.assertEqual(self.ok("GET", f"/schemas/ids/{sid}/schema"), json.loads(schema))
        self.assertEqual(self.ok("GET", f"/schemas/ids/{sid}/versions"),
                         [{"subject": "orders-value", "version": 1}])
        self.assertEqual(self.ok("GET", f"/schemas/ids/{sid}/subjects"), ["orders-value"])
        self.assertEqual(self.ok("GET", "/subjects"), ["orders-value"])
        self.assertEqual(self.ok("GET", "/subjects/orders-value/versions"), [1])
        for version in ("1", "latest", "-1"):
            got = self.ok("GET", f"/subjects/orders-value/versions/{version}")
            self.assertEqual({k: got[k] for k in ("subject", "version", "id")},
                             {"subject": "orders-value", "version": 1, "id": sid})
            self.assertEqual(json.loads(got["schema"]), json.loads(schema))
        self.assertEqual(self.ok("GET", "/subjects/orders-value/versions/latest/schema"),
                         json.loads(schema))
        self.assertEqual(self.ok("GET", "/subjects/orders-value/versions/1/referencedby"), [])
        self.assertEqual(self.ok("GET", "/schemas/types"), ["AVRO"])
        self.assertEqual(self.ok("GET", "/"), {})

    def test_second_version_and_latest(self):
        self.register("s", record())
        sid2 = self.register("s", record(fields=(("id", "long"), ("name", "string")),
                                         defaults={"name": "anon"}))
        self.assertEqual(sid2, 2)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2])
        self.assertEqual(self.ok("GET", "/subjects/s/versions/latest")["version"], 2)
        self.assertEqual(self.ok("GET", "/subjects/s/versions/1")["id"], 1)

    def test_same_schema_same_id_across_subjects(self):
        schema = record()
        a = self.register("a-value", schema)
        # Same schema, different whitespace and key order: still the same schema.
        reordered = json.dumps(dict(reversed(list(json.loads(schema).items()))), indent=2)
        b = self.register("b-value", reordered)
        self.assertEqual(a, b)
        self.assertEqual(self.ok("GET", f"/schemas/ids/{a}/subjects"), ["a-value", "b-value"])
        other = self.register("c-value", record(name="Other"))
        self.assertNotEqual(other, a)

    def test_reregister_returns_existing_id_without_new_version(self):
        first = self.register("s", record())
        self.register("s", record(fields=(("id", "long"), ("n", "int")), defaults={"n": 0}))
        self.assertEqual(self.register("s", record()), first)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2])

    def test_not_found_errors(self):
        self.error(404, 40403, "GET", "/schemas/ids/99")
        self.error(404, 40403, "GET", "/schemas/ids/99/versions")
        self.error(404, 40401, "GET", "/subjects/nope/versions")
        self.error(404, 40401, "GET", "/subjects/nope/versions/1")
        self.error(404, 40401, "GET", "/subjects/nope/versions/latest")
        self.register("s", record())
        self.error(404, 40402, "GET", "/subjects/s/versions/2")
        self.error(404, 40402, "GET", "/subjects/s/versions/7/schema")
        self.error(422, 42202, "GET", "/subjects/s/versions/0")
        self.error(422, 42202, "GET", "/subjects/s/versions/abc")
        self.error(404, 404, "GET", "/no/such/path")
        self.error(404, 404, "GET", "/schemas/ids/abc")
        self.error(405, 405, "PUT", "/subjects", {})

    def test_subject_names_are_url_decoded(self):
        self.register("a%2Fb%20c", record())
        self.assertEqual(self.ok("GET", "/subjects"), ["a/b c"])

    def test_invalid_schemas(self):
        bad = [
            "not json",
            json.dumps({"type": "record", "name": "R"}),  # no fields
            json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}),
            json.dumps({"type": "record", "name": "1R", "fields": []}),
            json.dumps({"type": "enum", "name": "E", "symbols": ["A", "A"]}),
            json.dumps({"type": "enum", "name": "E", "symbols": ["A"], "default": "B"}),
            json.dumps({"type": "fixed", "name": "F"}),
            json.dumps({"type": "array"}),
            json.dumps(["null", "null"]),
            json.dumps(["null", ["int"]]),
            json.dumps({"type": "record", "name": "R", "fields": [
                {"name": "a", "type": "int", "default": "x"}]}),
            json.dumps({"type": "record", "name": "R", "fields": [
                {"name": "a", "type": ["null", "int"], "default": 1}]}),
            json.dumps({"type": "record", "name": "R", "fields": [
                {"name": "a", "type": "int"}, {"name": "a", "type": "int"}]}),
            json.dumps({"type": "wat"}),
            json.dumps(42),
        ]
        for schema in bad:
            with self.subTest(schema=schema):
                message = self.error(422, 42201, "POST", "/subjects/s/versions",
                                     {"schema": schema})["message"]
                self.assertIn("Invalid schema", message)
        self.error(422, 42201, "POST", "/subjects/s/versions", {})
        self.error(422, 42201, "POST", "/subjects/s/versions",
                   {"schema": '{"type": "object"}', "schemaType": "JSON"})
        self.error(400, 400, "POST", "/subjects/s/versions", raw=b"{not json")
        self.error(415, 415, "POST", "/subjects/s/versions", {"schema": '"int"'},
                   content_type="text/plain")
        self.error(404, 40401, "GET", "/subjects/s/versions")  # nothing was registered

    def test_valid_schemas(self):
        good = [
            '"string"',
            '{"type": "int", "logicalType": "date"}',
            '["null", "string", {"type": "array", "items": "long"}]',
            json.dumps({"type": "record", "name": "Node", "namespace": "x.y", "doc": "a list",
                        "fields": [
                            {"name": "value", "type": {"type": "bytes", "logicalType": "decimal",
                                                       "precision": 10, "scale": 2}},
                            {"name": "next", "type": ["null", "Node"], "default": None},
                            {"name": "kind", "type": {"type": "enum", "name": "Kind",
                                                      "symbols": ["A", "B"], "default": "A"}},
                            {"name": "also", "type": "x.y.Kind", "default": "B"},
                            {"name": "id", "type": {"type": "fixed", "name": "Id", "size": 16}},
                            {"name": "tags", "type": {"type": "map", "values": "string"},
                             "default": {}},
                            {"name": "at", "type": {"type": "long",
                                                    "logicalType": "timestamp-millis"}},
                        ]}),
        ]
        for i, schema in enumerate(good):
            with self.subTest(schema=schema):
                self.assertEqual(self.register(f"s{i}", schema), i + 1)

    def test_content_types_accepted(self):
        for i, ctype in enumerate((CT, "application/json", "application/vnd.schemaregistry+json",
                                   "application/json; charset=utf-8")):
            with self.subTest(content_type=ctype):
                got = self.ok("POST", f"/subjects/t{i}/versions", {"schema": '"int"'},
                              content_type=ctype)
                self.assertEqual(got, {"id": 1})
        # No Content-Type at all (urllib would add a form type, so use http.client).
        conn = http.client.HTTPConnection("127.0.0.1", self.server.server_address[1], timeout=5)
        try:
            conn.putrequest("POST", "/subjects/none/versions")
            data = json.dumps({"schema": '"int"'}).encode()
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            resp = conn.getresponse()
            self.assertEqual((resp.status, json.loads(resp.read())), (200, {"id": 1}))
        finally:
            conn.close()

    def test_lookup(self):
        schema = record()
        sid = self.register("s", schema)
        got = self.ok("POST", "/subjects/s", {"schema": schema})
        self.assertEqual({k: got[k] for k in ("subject", "version", "id")},
                         {"subject": "s", "version": 1, "id": sid})
        self.error(404, 40403, "POST", "/subjects/s", {"schema": record(name="Other")})
        self.error(404, 40401, "POST", "/subjects/nope", {"schema": schema})
        self.error(422, 42201, "POST", "/subjects/s", {"schema": "{"})

    def test_delete(self):
        self.register("s", record())
        self.register("s", record(fields=(("id", "long"), ("n", "int")), defaults={"n": 0}))
        self.assertEqual(self.ok("DELETE", "/subjects/s/versions/latest"), 2)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1])
        self.assertEqual(self.ok("DELETE", "/subjects/s"), [1])
        self.error(404, 40401, "GET", "/subjects/s/versions")
        self.error(404, 40401, "DELETE", "/subjects/s")
        self.assertEqual(self.ok("GET", "/subjects"), [])
        self.assertEqual(self.ok("GET", "/schemas/ids/1")["schema"], json.dumps(
            json.loads(record()), separators=(",", ":")))  # ids outlive their subjects
        self.assertEqual(self.register("s", record()), 1)

    def test_config(self):
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "BACKWARD"})
        self.assertEqual(self.ok("PUT", "/config", {"compatibility": "FULL"}),
                         {"compatibility": "FULL"})
        self.assertEqual(self.ok("GET", "/config"), {"compatibilityLevel": "FULL"})
        self.error(404, 40408, "GET", "/config/s")
        self.assertEqual(self.ok("GET", "/config/s?defaultToGlobal=true"),
                         {"compatibilityLevel": "FULL"})
        self.assertEqual(self.ok("PUT", "/config/s", {"compatibility": "none"}),
                         {"compatibility": "NONE"})
        self.assertEqual(self.ok("GET", "/config/s"), {"compatibilityLevel": "NONE"})
        self.assertEqual(self.ok("DELETE", "/config/s"), {"compatibilityLevel": "NONE"})
        self.error(404, 40408, "GET", "/config/s")
        for level in sr.LEVELS:
            self.ok("PUT", "/config", {"compatibility": level})
        self.error(422, 42203, "PUT", "/config", {"compatibility": "SIDEWAYS"})
        self.error(422, 42203, "PUT", "/config/s", {"compatibility": "SIDEWAYS"})
        self.error(422, 42203, "PUT", "/config", {})

    # ------------------------------------------------------------ compatibility
    def test_backward(self):
        self.register("s", record())
        with_default = record(fields=(("id", "long"), ("name", "string")),
                              defaults={"name": "anon"})
        self.assertEqual(self.register("s", with_default), 2)
        no_default = record(fields=(("id", "long"), ("name", "string"), ("age", "int")),
                            defaults={"name": "anon"})
        message = self.error(409, 409, "POST", "/subjects/s/versions",
                             {"schema": no_default})["message"]
        self.assertIn('incompatible with an earlier schema for subject "s"', message)
        self.assertIn("age", message)
        # Removing a field is backward compatible (the new reader ignores it).
        self.assertEqual(self.register("s", record(fields=(("name", "string"),),
                                                   defaults={"name": "anon"})), 3)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2, 3])
        # Back to version 1's schema: already registered, so its id and no new version.
        self.assertEqual(self.register("s", record()), 1)
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1, 2, 3])

    def test_backward_promotions(self):
        self.register("s", record(fields=(("n", "int"),)))
        self.register("s", record(fields=(("n", "long"),)))  # int -> long: fine
        self.register("t", record(fields=(("n", "long"),)))
        self.error(409, 409, "POST", "/subjects/t/versions",
                   {"schema": record(fields=(("n", "int"),))})  # long -> int: refused
        self.register("s", record(fields=(("n", "double"),)))
        self.error(409, 409, "POST", "/subjects/s/versions",
                   {"schema": record(fields=(("n", "string"),))})

    def test_non_transitive_checks_latest_only_transitive_checks_all(self):
        a_int = record(fields=(("a", "int"),))
        empty = record(fields=())
        a_string = record(fields=(("a", "string"),), defaults={"a": ""})  # reads v2, not v1
        for subject, level, accepted in (("b", "BACKWARD", True),
                                         ("bt", "BACKWARD_TRANSITIVE", False)):
            with self.subTest(level=level):
                self.ok("PUT", f"/config/{subject}", {"compatibility": level})
                self.register(subject, a_int)
                self.register(subject, empty)
                status = self.call("POST", f"/subjects/{subject}/versions", {"schema": a_string})[0]
                self.assertEqual(status, 200 if accepted else 409)
        a_default = record(fields=(("a", "int"),), defaults={"a": 0})
        for subject, level, accepted in (("f", "FORWARD", True),
                                         ("ft", "FORWARD_TRANSITIVE", False),
                                         ("full", "FULL", True),
                                         ("fullt", "FULL_TRANSITIVE", False)):
            with self.subTest(level=level):
                self.ok("PUT", f"/config/{subject}", {"compatibility": level})
                self.register(subject, a_int)
                self.register(subject, a_default)
                # v2 reads it (a has a default there); v1 cannot (a has none).
                status = self.call("POST", f"/subjects/{subject}/versions", {"schema": empty})[0]
                self.assertEqual(status, 200 if accepted else 409)

    def test_forward(self):
        self.ok("PUT", "/config/s", {"compatibility": "FORWARD"})
        self.register("s", record(fields=(("id", "long"), ("name", "string"))))
        # Adding a field without a default is forward compatible (the old reader ignores it).
        self.register("s", record(fields=(("id", "long"), ("name", "string"), ("age", "int"))))
        # Removing a field the old reader needs (no default there) is not.
        self.error(409, 409, "POST", "/subjects/s/versions",
                   {"schema": record(fields=(("id", "long"), ("age", "int")))})
        # long -> int is forward compatible (old reader of long reads a new int).
        self.register("s", record(fields=(("id", "int"), ("name", "string"), ("age", "int"))))

    def test_full(self):
        self.ok("PUT", "/config/s", {"compatibility": "FULL"})
        self.register("s", record(fields=(("id", "long"),)))
        self.error(409, 409, "POST", "/subjects/s/versions",
                   {"schema": record(fields=(("id", "long"), ("x", "int")))})
        self.register("s", record(fields=(("id", "long"), ("x", "int")), defaults={"x": 1}))
        self.error(409, 409, "POST", "/subjects/s/versions",
                   {"schema": record(fields=(("id", "int"), ("x", "int")), defaults={"x": 1})})

    def test_none(self):
        self.ok("PUT", "/config/s", {"compatibility": "NONE"})
        self.register("s", record(fields=(("id", "long"),)))
        self.assertEqual(self.register("s", '"string"'), 2)
        self.assertEqual(self.register("s", record(name="Else", fields=(("z", "int"),))), 3)

    def test_global_config_applies(self):
        self.ok("PUT", "/config", {"compatibility": "NONE"})
        self.register("s", '"int"')
        self.register("s", '"string"')
        self.ok("PUT", "/config/s", {"compatibility": "BACKWARD"})
        self.error(409, 409, "POST", "/subjects/s/versions", {"schema": '"boolean"'})

    def test_compatibility_endpoint(self):
        self.assertEqual(self.ok("POST", "/compatibility/subjects/s/versions/latest",
                                 {"schema": '"int"'}), {"is_compatible": True})
        self.error(404, 40401, "POST", "/compatibility/subjects/s/versions/1", {"schema": '"int"'})
        self.register("s", record(fields=(("n", "int"),)))
        path = "/compatibility/subjects/s/versions/"
        for version, schema, expected in (
                ("latest", record(fields=(("n", "long"),)), True),
                ("1", record(fields=(("n", "long"),)), True),
                ("-1", record(fields=(("n", "string"),)), False),
                ("latest", record(fields=(("n", "int"), ("m", "int"))), False)):
            with self.subTest(schema=schema):
                got = self.ok("POST", path + version, {"schema": schema})
                self.assertEqual(got, {"is_compatible": expected})
        got = self.ok("POST", path + "latest?verbose=true",
                      {"schema": record(fields=(("n", "string"),))})
        self.assertFalse(got["is_compatible"])
        self.assertTrue(got["messages"])
        self.error(404, 40402, "POST", path + "9", {"schema": '"int"'})
        self.error(422, 42201, "POST", path + "latest", {"schema": "nope"})
        self.assertEqual(self.ok("GET", "/subjects/s/versions"), [1])  # nothing registered


class SchemaResolutionTest(unittest.TestCase):
    """incompatibilities(reader, writer) directly, for cases the HTTP tests do not reach."""

    def compatible(self, reader, writer):
        return not sr.incompatibilities(sr.parse_avro(json.dumps(reader))[1],
                                        sr.parse_avro(json.dumps(writer))[1])

    def test_primitives_and_promotions(self):
        ok = [("long", "int"), ("float", "int"), ("double", "int"), ("float", "long"),
              ("double", "long"), ("double", "float"), ("bytes", "string"), ("string", "bytes"),
              ("null", "null"), ("boolean", "boolean")]
        for reader, writer in ok:
            self.assertTrue(self.compatible(reader, writer), (reader, writer))
            if reader != writer and {reader, writer} != {"bytes", "string"}:
                self.assertFalse(self.compatible(writer, reader), (writer, reader))
        self.assertFalse(self.compatible("int", "string"))
        self.assertTrue(self.compatible({"type": "long", "logicalType": "timestamp-millis"},
                                        {"type": "int", "logicalType": "date"}))

    def test_unions(self):
        self.assertTrue(self.compatible(["null", "string"], "string"))
        self.assertFalse(self.compatible(["null", "int"], "string"))
        self.assertTrue(self.compatible(["null", "long", "string"], ["int", "null"]))
        self.assertFalse(self.compatible(["null", "long"], ["null", "string"]))
        self.assertTrue(self.compatible("long", ["int", "long"]))
        self.assertFalse(self.compatible("long", ["null", "long"]))

    def test_enums_fixed_arrays_maps(self):
        enum = lambda symbols, **kw: {"type": "enum", "name": "E", "symbols": symbols, **kw}
        self.assertTrue(self.compatible(enum(["A", "B", "C"]), enum(["A", "B"])))
        self.assertFalse(self.compatible(enum(["A"]), enum(["A", "B"])))
        self.assertTrue(self.compatible(enum(["A", "U"], default="U"), enum(["A", "B"])))
        self.assertFalse(self.compatible(enum(["A"]) | {"name": "F"}, enum(["A"])))
        fixed = lambda size, name="F": {"type": "fixed", "name": name, "size": size}
        self.assertTrue(self.compatible(fixed(4), fixed(4)))
        self.assertFalse(self.compatible(fixed(4), fixed(8)))
        self.assertFalse(self.compatible(fixed(4, "G"), fixed(4)))
        self.assertTrue(self.compatible({"type": "array", "items": "long"},
                                        {"type": "array", "items": "int"}))
        self.assertFalse(self.compatible({"type": "map", "values": "int"},
                                         {"type": "map", "values": "long"}))
        self.assertFalse(self.compatible({"type": "map", "values": "int"},
                                         {"type": "array", "items": "int"}))

    def test_records_names_aliases_recursion(self):
        rec = lambda name, fields, **kw: {"type": "record", "name": name, "fields": fields, **kw}
        f = lambda name, t, **kw: {"name": name, "type": t, **kw}
        self.assertFalse(self.compatible(rec("A", []), rec("B", [])))
        self.assertTrue(self.compatible(rec("A", [], aliases=["B"]), rec("B", [])))
        # The record name matches unqualified (as Avro's Java SchemaCompatibility does).
        self.assertTrue(self.compatible(rec("A", [], namespace="x"), rec("A", [], namespace="y")))
        self.assertTrue(self.compatible(rec("A", [f("new", "int", aliases=["old"])]),
                                        rec("A", [f("old", "int")])))
        self.assertFalse(self.compatible(rec("A", [f("x", "int")]), rec("A", [f("x", "string")])))
        node = lambda t: rec("N", [f("v", t), f("next", ["null", "N"], default=None)])
        self.assertTrue(self.compatible(node("long"), node("int")))
        self.assertFalse(self.compatible(node("int"), node("long")))
        nested = lambda t: rec("Outer", [f("in", rec("Inner", [f("v", t)]))])
        self.assertTrue(self.compatible(nested("long"), nested("int")))
        self.assertFalse(self.compatible(nested("int"), nested("long")))


class BasicAuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = start(basic_auth="alice:s3cret")
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}"

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)

    def test_requests_need_credentials(self):
        for auth in (None, "alice:wrong", "bob:s3cret"):
            with self.subTest(auth=auth):
                status, body, headers = Client(self.base, auth=auth).call("GET", "/subjects")
                self.assertEqual((status, body), (401, {"error_code": 401,
                                                        "message": "Unauthorized"}))
                self.assertIn("Basic", headers["WWW-Authenticate"])
        status, body, _ = Client(self.base).call("POST", "/subjects/s/versions",
                                                  {"schema": '"int"'})
        self.assertEqual(status, 401)
        self.assertEqual(self.server.registry.subjects, {})

    def test_right_credentials(self):
        client = Client(self.base, auth="alice:s3cret")
        self.assertEqual(client.call("POST", "/subjects/s/versions", {"schema": '"int"'})[:2],
                         (200, {"id": 1}))
        self.assertEqual(client.call("GET", "/subjects")[:2], (200, ["s"]))


@unittest.skipUnless(shutil.which("openssl"), "the TLS test needs the openssl command, "
                                              "which is not installed")
class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.cert, cls.key = (os.path.join(cls.tmp.name, n) for n in ("cert.pem", "key.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", cls.key, "-out", cls.cert, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True)
        cls.server = start(tls_cert=cls.cert, tls_key=cls.key, basic_auth="u:p")
        cls.base = f"https://127.0.0.1:{cls.server.server_address[1]}"

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)
        cls.tmp.cleanup()

    def test_https_with_the_right_ca(self):
        client = Client(self.base, ssl.create_default_context(cafile=self.cert), auth="u:p")
        self.assertEqual(client.call("POST", "/subjects/s/versions", {"schema": '"long"'})[:2],
                         (200, {"id": 1}))
        self.assertEqual(client.call("GET", "/schemas/ids/1")[:2], (200, {"schema": '"long"'}))

    def test_untrusted_certificate_is_refused(self):
        with self.assertRaises(urllib.error.URLError):
            Client(self.base, ssl.create_default_context()).call("GET", "/subjects")
        # The server survives the failed handshake.
        client = Client(self.base, ssl.create_default_context(cafile=self.cert), auth="u:p")
        self.assertEqual(client.call("GET", "/subjects")[0], 200)

    def test_plain_http_to_tls_port_fails(self):
        with self.assertRaises((urllib.error.URLError, ConnectionError, OSError)):
            Client(self.base.replace("https", "http")).call("GET", "/subjects")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CommandLineTest(unittest.TestCase):
    def test_subprocess_serves_and_logs(self):
        proc = subprocess.Popen([sys.executable, SERVER_PY, "--port", "0",
                                 "--basic-auth", "u:p"], stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stderr.readline()
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)", first).group(1))
            client = Client(f"http://127.0.0.1:{port}", auth="u:p")
            self.assertEqual(client.call("GET", "/subjects")[:2], (200, []))
            self.assertIn('"GET /subjects HTTP/1.1" 200', proc.stderr.readline())
        finally:
            proc.terminate()
            proc.wait(5)
            proc.stderr.close()

    def test_bad_flags(self):
        result = subprocess.run([sys.executable, SERVER_PY, "--basic-auth", "nocolon"],
                                capture_output=True, text=True, timeout=10)
        self.assertEqual(result.returncode, 2)
        self.assertIn("USER:PASS", result.stderr)

    @unittest.skipUnless(shutil.which("bash"), "needs bash")
    def test_shell_script_start_status_stop(self):
        script = os.path.join(HERE, "schema-registry.sh")
        env = dict(os.environ, KAFLOWSQL_REGISTRY_PORT=str(free_port()))
        run = lambda *args: subprocess.run(["bash", script, *args], env=env, capture_output=True,
                                           text=True, timeout=20)
        try:
            started = run("start", "--basic-auth", "u:p")
            self.assertEqual(started.returncode, 0, started.stderr)
            self.assertIn("listening on http://127.0.0.1:" + env["KAFLOWSQL_REGISTRY_PORT"],
                          started.stdout)
            self.assertIn("already running", run("start").stdout)
            self.assertEqual(run("status").returncode, 0)
            client = Client(f"http://127.0.0.1:{env['KAFLOWSQL_REGISTRY_PORT']}", auth="u:p")
            self.assertEqual(client.call("GET", "/config")[:2],
                             (200, {"compatibilityLevel": "BACKWARD"}))
        finally:
            self.assertIn("stopped", run("stop").stdout)
            log = os.path.join(HERE, "..", "..", ".deps",
                               f"schema-registry-{env['KAFLOWSQL_REGISTRY_PORT']}.log")
            if os.path.exists(log):
                os.remove(log)
        self.assertEqual(run("status").returncode, 1)


if __name__ == "__main__":
    unittest.main()
