"""The XML-RPC text form of the value model (spec §2.5, §1.6).

Printing follows upstream byte for byte: no whitespace, untyped ints and
strings, `<boolean>`, `<double>`, `<nil/>`. Parsing streams expat events
straight into the value model (no element tree: it is the hot path of every
XML call) with the protections defusedxml applies: no DTD, so no entity
declarations, expansions or external references. It accepts what other
XML-RPC peers send: `<string>`, `<int>`, `<i4>`, `<i8>`, whitespace between
elements, and a missing prolog.
"""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat

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


class _Frame:
    __slots__ = ("items", "tag", "text")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.text: list[str] = []
        self.items: list[Any] = []


# The elements each element may contain; text is allowed only in the leaves.
_CHILDREN: dict[str, frozenset[str]] = {
    "methodCall": frozenset({"methodName", "params"}),
    "methodResponse": frozenset({"params", "fault"}),
    "params": frozenset({"param"}),
    "param": frozenset({"value"}),
    "fault": frozenset({"value"}),
    "value": frozenset(
        {"string", "int", "i4", "i8", "boolean", "double", "nil", "array", "struct"}
    ),
    "array": frozenset({"data"}),
    "data": frozenset({"value"}),
    "struct": frozenset({"member"}),
    "member": frozenset({"name", "value"}),
}
_LEAVES = frozenset({"methodName", "name", "string", "int", "i4", "i8", "boolean", "double", "nil"})
_MAX_STACK = 2 * MAX_DEPTH + 8


def _refuse(*_: Any) -> int:
    raise XmlTextError("refused unsafe XML: DTDs and entity declarations are not accepted")


class _Builder:
    """Expat callbacks that build value-model values as elements close."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = [_Frame("")]

    def start(self, tag: str, attrs: Any) -> None:
        parent = self.stack[-1]
        allowed = _CHILDREN.get(parent.tag)
        if parent.tag and (allowed is None or tag not in allowed):
            raise XmlTextError(f"<{parent.tag}> may not hold <{tag}>")
        if len(self.stack) > _MAX_STACK:
            raise XmlTextError("XML value nests too deeply")
        self.stack.append(_Frame(tag))

    def chars(self, data: str) -> None:
        self.stack[-1].text.append(data)

    def end(self, tag: str) -> None:
        frame = self.stack.pop()
        text = "".join(frame.text)
        if tag not in _LEAVES and tag != "value" and text.strip():
            raise XmlTextError(f"unexpected text inside <{tag}>")
        self.stack[-1].items.append(_close(tag, text, frame.items))


def _close(tag: str, text: str, items: list[Any]) -> Any:
    if tag == "value":
        if not items:
            return text
        if len(items) > 1 or text.strip():
            raise XmlTextError("<value> must hold text or one typed element")
        return items[0]
    if tag in ("string", "name", "methodName"):
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
        if len(items) > 1:
            raise XmlTextError("<array> must hold one <data>")
        return items[0] if items else []
    if tag == "struct":
        out: dict[str, Any] = {}
        for name, v in items:
            out.setdefault(name, v)
        return out
    if tag == "member":
        if len(items) != 2 or not isinstance(items[0], _Name):
            raise XmlTextError("<member> must hold <name> then <value>")
        return (str(items[0]), items[1])
    if tag in ("param", "fault"):
        if len(items) != 1:
            raise XmlTextError(f"<{tag}> must hold one <value>")
        return _Wrapped(tag, items[0])
    if tag in ("data", "params"):
        return [x.value if isinstance(x, _Wrapped) else x for x in items]
    return _Wrapped(tag, items)


class _Name(str):
    """A struct member's name, told apart from a string value."""


class _Wrapped:
    __slots__ = ("tag", "value")

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


def _parse(text: str | bytes) -> Any:
    """The document's root element, built; any expat or structure error as XmlTextError."""
    builder = _Builder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = _end_with_names(builder)
    parser.CharacterDataHandler = builder.chars
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise XmlTextError(f"malformed XML: {exc}") from None
    (root,) = builder.stack[0].items
    return root


def _end_with_names(builder: _Builder) -> Any:
    def end(tag: str) -> None:
        builder.end(tag)
        if tag == "name":
            items = builder.stack[-1].items
            items[-1] = _Name(items[-1])

    return end


def parse_value_text(text: str | bytes) -> Any:
    """A lone `<value>...</value>` document into the value model."""
    result = _parse(text)
    if isinstance(result, _Wrapped):
        raise XmlTextError(f"expected <value>, got <{result.tag}>")
    return result


def parse_method_call(text: str | bytes) -> tuple[str, list[Any]]:
    root = _parse(text)
    if not isinstance(root, _Wrapped) or root.tag != "methodCall":
        raise XmlTextError("expected <methodCall>")
    name = next((x for x in root.value if isinstance(x, str)), "").strip()
    if not name:
        raise XmlTextError("<methodCall> has no <methodName>")
    params = next((x for x in root.value if isinstance(x, list)), [])
    return name, params


def parse_method_response(text: str | bytes) -> tuple[bool, Any]:
    """(ok, value): the Status/Value/ErrorDescription struct, or a `<fault>`."""
    root = _parse(text)
    if not isinstance(root, _Wrapped) or root.tag != "methodResponse" or len(root.value) != 1:
        raise XmlTextError("expected <methodResponse> with <params> or <fault>")
    (body,) = root.value
    if isinstance(body, _Wrapped):  # <fault>
        f = body.value
        code = f.get("faultCode") if isinstance(f, dict) else None
        msg = f.get("faultString") if isinstance(f, dict) else None
        return False, ["fault", code, msg]
    if len(body) != 1:
        raise XmlTextError("<params> of a response must hold one <param>")
    result = body[0]
    if isinstance(result, dict):
        status = result.get("Status")
        if status == "Success" and "Value" in result:
            return True, result["Value"]
        if status == "Failure" and "ErrorDescription" in result:
            return False, result["ErrorDescription"]
    return True, result
