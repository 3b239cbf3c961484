"""The XML-RPC text form of the value model (spec §2.5, §1.6).

Printing follows upstream byte for byte: no whitespace, untyped ints and
strings, `<boolean>`, `<double>`, `<nil/>`. Parsing goes through defusedxml
(entity expansion and external references are refused) and accepts what
other XML-RPC peers send: `<string>`, `<int>`, `<i4>`, `<i8>`, whitespace
between elements, and a missing prolog.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from xenopsd.api.marshal import parse_ocaml_int


class XmlTextError(ValueError):
    """Malformed or unsafe XML, or XML that is not XML-RPC."""


_DROP = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;"})
PROLOG = '<?xml version="1.0"?>'
# xenopsd's types nest a dozen levels at most; two frames per level must stay
# well inside Python's recursion limit.
MAX_DEPTH = 200


def _text(s: str) -> str:
    return _DROP.sub("", s).translate(_ESCAPES)


def _float(v: float) -> str:
    text = f"{v:.16g}"
    return text if float(text) == v or v != v else f"{v:.17g}"


def value(v: Any) -> str:
    """`<value>...</value>` for one value-model value."""
    out: list[str] = []
    _write(v, out)
    return "".join(out)


def _write(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append(f"<value>{_text(v)}</value>")
    elif v is None:
        out.append("<value><nil/></value>")
    elif v is True:
        out.append("<value><boolean>1</boolean></value>")
    elif v is False:
        out.append("<value><boolean>0</boolean></value>")
    elif isinstance(v, int):
        out.append(f"<value>{v}</value>")
    elif isinstance(v, float):
        out.append(f"<value><double>{_float(v)}</double></value>")
    elif isinstance(v, list | tuple):
        out.append("<value><array><data>")
        for x in v:
            _write(x, out)
        out.append("</data></array></value>")
    elif isinstance(v, dict):
        out.append("<value><struct>")
        for k, x in v.items():
            out.append(f"<member><name>{_text(k)}</name>")
            _write(x, out)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        raise XmlTextError(f"not a wire value: {type(v).__name__}")


def method_call(name: str, params: list[Any]) -> str:
    body = "".join(f"<param>{value(p)}</param>" for p in params)
    return (
        f"{PROLOG}<methodCall><methodName>{_text(name)}</methodName>"
        f"<params>{body}</params></methodCall>"
    )


def _response(members: str) -> str:
    return (
        f"{PROLOG}<methodResponse><params><param><value><struct>{members}"
        "</struct></value></param></params></methodResponse>"
    )


def success(result: Any) -> str:
    return _response(
        "<member><name>Status</name><value>Success</value></member>"
        f"<member><name>Value</name>{value(result)}</member>"
    )


def failure(error: Any) -> str:
    return _response(
        "<member><name>Status</name><value>Failure</value></member>"
        f"<member><name>ErrorDescription</name>{value(error)}</member>"
    )


def _parse(text: str | bytes) -> Element:
    try:
        return safe_et.fromstring(text, forbid_dtd=True)  # type: ignore[no-any-return]
    except DefusedXmlException as exc:
        raise XmlTextError(f"refused unsafe XML: {type(exc).__name__}") from None
    except (safe_et.ParseError, ValueError) as exc:
        raise XmlTextError(f"malformed XML: {exc}") from None


def _children(el: Element) -> list[Element]:
    for part in (el.text, *(c.tail for c in el)):
        if part and part.strip():
            raise XmlTextError(f"unexpected text inside <{el.tag}>")
    return list(el)


def _only_child(el: Element, tag: str) -> Element:
    kids = _children(el)
    if len(kids) != 1 or kids[0].tag != tag:
        raise XmlTextError(f"<{el.tag}> must hold one <{tag}>")
    return kids[0]


def parse_value(el: Element, depth: int = 0) -> Any:
    """A `<value>` element into the value model."""
    if el.tag != "value":
        raise XmlTextError(f"expected <value>, got <{el.tag}>")
    if depth > MAX_DEPTH:
        raise XmlTextError("XML value nests too deeply")
    if len(el) == 0:
        return el.text or ""
    (typed,) = _children(el) if len(el) == 1 else (None,)
    if typed is None:
        raise XmlTextError("<value> must hold one typed element")
    tag, text = typed.tag, (typed.text or "")
    if tag == "string":
        return text
    if tag in ("int", "i4", "i8"):
        try:
            return parse_ocaml_int(text.strip())
        except ValueError:
            raise XmlTextError(f"bad integer {text!r}") from None
    if tag == "boolean":
        return text.strip() == "1"
    if tag == "double":
        try:
            return float(text.strip())
        except ValueError:
            raise XmlTextError(f"bad double {text!r}") from None
    if tag == "nil":
        return None
    if tag == "array":
        kids = _children(typed)
        if not kids:
            return []
        if len(kids) != 1 or kids[0].tag != "data":
            raise XmlTextError("<array> must hold one <data>")
        return [parse_value(v, depth + 1) for v in _children(kids[0])]
    if tag == "struct":
        out: dict[str, Any] = {}
        for member in _children(typed):
            if member.tag != "member":
                raise XmlTextError(f"<struct> holds <{member.tag}>, not <member>")
            parts = {c.tag: c for c in _children(member)}
            if set(parts) != {"name", "value"}:
                raise XmlTextError("<member> must hold <name> and <value>")
            out.setdefault(parts["name"].text or "", parse_value(parts["value"], depth + 1))
        return out
    raise XmlTextError(f"unknown XML-RPC type <{tag}>")


def parse_method_call(text: str | bytes) -> tuple[str, list[Any]]:
    root = _parse(text)
    if root.tag != "methodCall":
        raise XmlTextError(f"expected <methodCall>, got <{root.tag}>")
    name_el = root.find("methodName")
    if name_el is None or not (name_el.text or "").strip():
        raise XmlTextError("<methodCall> has no <methodName>")
    params_el = root.find("params")
    params: list[Any] = []
    if params_el is not None:
        for p in _children(params_el):
            if p.tag != "param":
                raise XmlTextError(f"<params> holds <{p.tag}>, not <param>")
            params.append(parse_value(_only_child(p, "value")))
    return name_el.text.strip(), params  # type: ignore[union-attr]


def parse_method_response(text: str | bytes) -> tuple[bool, Any]:
    """(ok, value): the Status/Value/ErrorDescription struct, or a `<fault>`."""
    root = _parse(text)
    if root.tag != "methodResponse":
        raise XmlTextError(f"expected <methodResponse>, got <{root.tag}>")
    fault = root.find("fault")
    if fault is not None:
        f = parse_value(_only_child(fault, "value"))
        code = f.get("faultCode") if isinstance(f, dict) else None
        msg = f.get("faultString") if isinstance(f, dict) else None
        return False, ["fault", code, msg]
    params = root.find("params")
    if params is None:
        raise XmlTextError("<methodResponse> has neither <params> nor <fault>")
    result = parse_value(_only_child(_only_child(params, "param"), "value"))
    if isinstance(result, dict):
        status = result.get("Status")
        if status == "Success" and "Value" in result:
            return True, result["Value"]
        if status == "Failure" and "ErrorDescription" in result:
            return False, result["ErrorDescription"]
    return True, result
