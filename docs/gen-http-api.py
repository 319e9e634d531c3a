#!/usr/bin/env python3
"""Writes the book's HTTP API reference from the OpenAPI description the relay serves.

    python3 docs/gen-http-api.py            # writes docs/src/reference/http-api.md
    python3 docs/gen-http-api.py --stdout   # prints it instead
    python3 docs/gen-http-api.py --check    # exit 1, with a diff, if the page is not current

Reads src/http/openapi.json (the file `GET /admin/openapi.json` serves; a test holds it to
the routers) and renders every path and method with its parameters, request body,
responses and security, then every schema. Python 3 standard library only; the output
depends on the JSON file alone (paths sorted, nothing from the clock or the environment),
so tests/interop/docs.sh can compare it with the committed page.
"""

import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "http" / "openapi.json"
TARGET = ROOT / "docs" / "src" / "reference" / "http-api.md"
METHODS = ["get", "put", "post", "patch", "delete", "head", "options"]
GROUPS = [
    ("Admin API", "admin-api", "/admin",
     "On the operator listener (`[admin] listen`), with the admin token."),
    ("Account API", "account-api", "/account",
     "On the public listener (`[http] listen`), with an account key; each key reaches its "
     "own account only."),
]


def text(value):
    """Markdown-safe running text: one line, `<` `>` `&` escaped outside code spans."""
    value = " ".join(str(value).split())
    parts = value.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;")
                    .replace(">", "&gt;"))
    return "`".join(parts)


def cell(value):
    """Text for a table cell: also `|` escaped."""
    return text(value).replace("|", "\\|")


def code(value):
    """An inline code span holding value, whatever backticks it contains."""
    value = str(value)
    fence = "`"
    while fence in value:
        fence += "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def anchor(prefix, name):
    return prefix + "-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def ref_name(ref):
    if not ref.startswith("#/components/schemas/"):
        raise SystemExit(f"unsupported $ref {ref!r}")
    return ref.rsplit("/", 1)[1]


def ref_link(ref):
    name = ref_name(ref)
    return f"[{code(name)}](#{anchor('schema', name)})"


def constraints(schema):
    """What a schema allows beyond its type, as short phrases."""
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(code(json.dumps(v) if not isinstance(v, str) else v)
                                         for v in schema["enum"]))
    if "format" in schema:
        out.append("format " + code(schema["format"]))
    if "pattern" in schema:
        out.append("pattern " + code(schema["pattern"]))
    for key, word in (("minimum", "at least"), ("maximum", "at most")):
        if key in schema:
            out.append(f"{word} {schema[key]}")
    if "minLength" in schema:
        out.append(f"at least {schema['minLength']} characters")
    if "maxLength" in schema:
        out.append(f"at most {schema['maxLength']} characters")
    if "minItems" in schema:
        out.append(f"at least {schema['minItems']} items")
    if "maxItems" in schema:
        out.append(f"at most {schema['maxItems']} items")
    if "default" in schema:
        out.append("default " + code(json.dumps(schema["default"], ensure_ascii=False)))
    if schema.get("nullable"):
        out.append("may be null")
    return out


def type_of(schema):
    """A one-line description of a schema's type (inline objects are expanded elsewhere)."""
    if "$ref" in schema:
        base = ref_link(schema["$ref"])
    elif "allOf" in schema:
        base = " and ".join(type_of(s) for s in schema["allOf"])
    elif "oneOf" in schema or "anyOf" in schema:
        base = " or ".join(type_of(s) for s in schema.get("oneOf", schema.get("anyOf")))
    else:
        kind = schema.get("type", "any")
        if kind == "array":
            base = "array of " + type_of(schema.get("items", {}))
        elif kind == "object":
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict) and not schema.get("properties"):
                base = "object: name → " + type_of(extra)
            else:
                base = "object"
        else:
            base = kind
    more = constraints(schema)
    return base + (" (" + "; ".join(more) + ")" if more else "")


def field_rows(schema, prefix=""):
    """(name, type, required, description) for each property, nested objects flattened."""
    rows = []
    if "allOf" in schema:
        for part in schema["allOf"]:
            if "$ref" in part:
                rows.append((prefix + "…", "every field of " + ref_link(part["$ref"]), "", ""))
            else:
                rows.extend(field_rows(part, prefix))
        return rows
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        full = prefix + name
        rows.append((full, type_of(prop), "yes" if name in required else "",
                     prop.get("description", "")))
        if prop.get("type") == "object" and prop.get("properties"):
            rows.extend(field_rows(prop, full + "."))
        items = prop.get("items", {})
        if prop.get("type") == "array" and items.get("type") == "object" and items.get("properties"):
            rows.extend(field_rows(items, full + "[]."))
    return rows


def has_fields(schema):
    return bool(schema.get("properties")) or "allOf" in schema


def field_table(schema):
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, kind, req, desc in field_rows(schema):
        lines.append(f"| {code(name)} | {cell(kind)} | {req} | {cell(desc)} |")
    if schema.get("additionalProperties") is False:
        lines.append("")
        lines.append("No other field is allowed.")
    return lines


def security_of(op, default):
    sec = op.get("security", default)
    if not sec:
        return "none"
    names = []
    for requirement in sec:
        names.append(" and ".join(code(name) for name in requirement) or "none")
    return " or ".join(names)


def operation(path, method, op, default_security, out):
    op_id = op.get("operationId", method + path)
    out.append(f"### {method.upper()} {code(path)} {{#{anchor('op', op_id)}}}")
    out.append("")
    if op.get("summary"):
        out.append(text(op["summary"]) + ".")
        out.append("")
    if op.get("description"):
        out.append(text(op["description"]))
        out.append("")
    out.append(f"Operation {code(op_id)}; security: {security_of(op, default_security)}.")
    out.append("")
    params = op.get("parameters", [])
    if params:
        out.append("**Parameters**")
        out.append("")
        out.append("| name | in | type | required | description |")
        out.append("|---|---|---|---|---|")
        for p in params:
            if "$ref" in p:
                raise SystemExit(f"{path} {method}: parameter $ref is not supported")
            kind = cell(type_of(p.get("schema", {})))
            req = "yes" if p.get("required") or p.get("in") == "path" else ""
            out.append(f"| {code(p['name'])} | {p['in']} | {kind} | {req} | "
                       f"{cell(p.get('description', ''))} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        req = "required" if body.get("required") else "optional"
        out.append(f"**Request body** ({req})" + (": " + text(body["description"])
                                                    if body.get("description") else ""))
        out.append("")
        for ctype, media in body.get("content", {}).items():
            schema = media.get("schema", {})
            out.append(f"- {code(ctype)}: {type_of(schema)}")
            if has_fields(schema):
                out.append("")
                out.extend("  " + line if line else "" for line in field_table(schema))
                out.append("")
        if out[-1] != "":
            out.append("")
    out.append("**Responses**")
    out.append("")
    out.append("| status | description | body |")
    out.append("|---|---|---|")
    for status in sorted(op.get("responses", {})):
        resp = op["responses"][status]
        bodies = []
        for ctype, media in resp.get("content", {}).items():
            bodies.append(f"{code(ctype)}: " + cell(type_of(media.get("schema", {}))))
        out.append(f"| {code(status)} | {cell(resp.get('description', ''))} | "
                   f"{'; '.join(bodies)} |")
    out.append("")


def render(spec):
    info = spec.get("info", {})
    default_security = spec.get("security", [])
    out = [
        "# Admin and account API (OpenAPI)",
        "",
        "<!-- Generated by docs/gen-http-api.py from src/http/openapi.json: do not edit by",
        "     hand; run `python3 docs/gen-http-api.py` after changing the OpenAPI file. -->",
        "",
        f"This page is generated from `src/http/openapi.json` (OpenAPI {spec.get('openapi', '?')}), "
        "the description the relay serves at `GET /admin/openapi.json`. "
        "[HTTP endpoints](http.md) introduces both APIs and the public pages.",
        "",
        f"**{text(info.get('title', ''))}**, version {text(info.get('version', ''))}.",
        "",
    ]
    if info.get("description"):
        out += [text(info["description"]), ""]
    servers = spec.get("servers", [])
    if servers:
        out += ["Servers: " + ", ".join(code(s["url"]) for s in servers) + ".", ""]
    schemes = spec.get("components", {}).get("securitySchemes", {})
    if schemes:
        out += ["## Security schemes", "", "| scheme | type | description |", "|---|---|---|"]
        for name in sorted(schemes):
            s = schemes[name]
            kind = s.get("type", "")
            if kind == "http":
                kind = f"HTTP {s.get('scheme', '')}".strip()
            out.append(f"| {code(name)} | {cell(kind)} | {cell(s.get('description', ''))} |")
        out += ["", "Every operation uses " + security_of({}, default_security)
                + " unless it names another.", ""]

    paths = spec.get("paths", {})
    placed = set()
    groups = []
    for title, group_anchor, prefix, blurb in GROUPS:
        members = [p for p in sorted(paths) if p == prefix or p.startswith(prefix + "/")]
        placed.update(members)
        groups.append((title, group_anchor, blurb, members))
    rest = [p for p in sorted(paths) if p not in placed]
    if rest:
        groups.append(("Other paths", "other-paths", "", rest))

    for title, group_anchor, blurb, members in groups:
        out += [f"## {title} {{#{group_anchor}}}", ""]
        if blurb:
            out += [blurb, ""]
        out += ["| method | path | summary |", "|---|---|---|"]
        for path in members:
            for method in METHODS:
                if method in paths[path]:
                    op = paths[path][method]
                    op_id = op.get("operationId", method + path)
                    out.append(f"| {method.upper()} | [{code(path)}](#{anchor('op', op_id)}) | "
                               f"{cell(op.get('summary', ''))} |")
        out.append("")
        for path in members:
            unknown = set(paths[path]) - set(METHODS)
            if unknown:
                raise SystemExit(f"{path}: unsupported path-level keys {sorted(unknown)}")
            for method in METHODS:
                if method in paths[path]:
                    operation(path, method, paths[path][method], default_security, out)

    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name in sorted(schemas):
            schema = schemas[name]
            out += [f"### {code(name)} {{#{anchor('schema', name)}}}", ""]
            if schema.get("description"):
                out += [text(schema["description"]), ""]
            if has_fields(schema):
                out += field_table(schema)
            else:
                out.append("Type: " + type_of(schema) + ".")
            out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv):
    mode = argv[1] if len(argv) > 1 else "--write"
    if mode not in ("--write", "--stdout", "--check") or len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    page = render(json.loads(SOURCE.read_text(encoding="utf-8")))
    if mode == "--stdout":
        sys.stdout.write(page)
        return 0
    if mode == "--check":
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current == page:
            print(f"{TARGET.relative_to(ROOT)} is current")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(True), page.splitlines(True),
            str(TARGET.relative_to(ROOT)), "generated from src/http/openapi.json"))
        print(f"{TARGET.relative_to(ROOT)} differs from what docs/gen-http-api.py makes: "
              "run python3 docs/gen-http-api.py")
        return 1
    TARGET.write_text(page, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
