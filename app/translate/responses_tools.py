"""The Responses API ``tools`` and ``tool_choice`` as Chat Completions ones.

Function and custom tools (and those inside ``namespace`` tools) become chat functions
under flat names; hosted tools, which OpenAI runs itself, are dropped.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from app.translate.ids import shorten_tool_name
from app.translate.responses_context import ToolOrigin
from app.translate.responses_values import array_at, bad, name_at, object_at, string_at

# A tool inside a ``namespace`` tool becomes the function ``<namespace>__<name>``.
NAMESPACE_SEPARATOR = "__"
# Tools OpenAI runs itself: a translated backend cannot, so they are dropped.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "programmatic_tool_calling",
    }
)


class ChatFunction(TypedDict):
    name: str
    description: NotRequired[str]
    parameters: dict[str, Any]
    strict: NotRequired[bool]


class ChatTool(TypedDict):
    type: Literal["function"]
    function: ChatFunction


def flat_name(namespace: str | None, name: str) -> str:
    """The Chat Completions function name of tool ``name`` (inside ``namespace``, if any)."""
    if namespace is None:
        return name
    return shorten_tool_name(f"{namespace}{NAMESPACE_SEPARATOR}{name}")


class ToolSet:
    """The request's function and custom tools as chat functions, by chat name."""

    def __init__(self) -> None:
        self.defs: dict[str, ChatTool] = {}
        self.origins: dict[str, ToolOrigin] = {}

    def add_all(self, raw: Any, param: str) -> None:
        for i, tool in enumerate(array_at(raw, param)):
            p = f"{param}[{i}]"
            tool = object_at(tool, p)
            kind = tool.get("type")
            if kind == "function":
                self.function(tool, p, None)
            elif kind == "custom":
                self.custom(tool, p, None)
            elif kind == "namespace":
                self.namespace(tool, p)
            elif isinstance(kind, str) and kind in HOSTED_TOOLS:
                continue
            else:
                raise bad(f"Invalid value for '{p}.type': {kind!r} is not supported.", f"{p}.type")

    def namespace(self, tool: dict[str, Any], param: str) -> None:
        namespace = name_at(tool.get("name"), f"{param}.name")
        for j, inner in enumerate(array_at(tool.get("tools"), f"{param}.tools")):
            p = f"{param}.tools[{j}]"
            inner = object_at(inner, p)
            kind = inner.get("type")
            if kind == "function":
                self.function(inner, p, namespace)
            elif kind == "custom":
                self.custom(inner, p, namespace)
            else:
                raise bad(
                    f"Invalid value for '{p}.type': a namespace holds function and custom tools "
                    f"only, got {kind!r}.",
                    f"{p}.type",
                )

    def _add(
        self, name: str, namespace: str | None, custom: bool, tool: ChatTool, param: str
    ) -> None:
        flat = flat_name(namespace, name)
        if flat in self.defs:
            earlier = self.origins.get(flat)
            was = (earlier.namespace, earlier.name) if earlier else (None, flat)
            if was != (namespace, name):
                # Two tools, one name on the way to the backend: its calls could not be
                # told apart (the first used to vanish).
                raise bad(
                    f"Invalid value for '{param}.name': this tool becomes the function "
                    f"{flat!r} for the backend, as an earlier tool does; rename one of them.",
                    f"{param}.name",
                )
        tool["function"]["name"] = flat
        # A later definition of the same name (an ``additional_tools`` item repeating one)
        # replaces the earlier one.
        self.defs[flat] = tool
        if namespace is not None or custom:
            self.origins[flat] = ToolOrigin(name, namespace=namespace, custom=custom)
        else:
            self.origins.pop(flat, None)

    def function(self, tool: dict[str, Any], param: str, namespace: str | None) -> None:
        name = name_at(tool.get("name"), f"{param}.name")
        parameters = tool.get("parameters")
        schema = object_at(parameters, f"{param}.parameters") if parameters is not None else {}
        fn = _function(name, tool, param, schema or {"type": "object", "properties": {}})
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise bad(
                    f"Invalid type for '{param}.strict': expected a boolean.", f"{param}.strict"
                )
            fn["strict"] = strict
        self._add(name, namespace, False, {"type": "function", "function": fn}, param)

    def custom(self, tool: dict[str, Any], param: str, namespace: str | None) -> None:
        name = name_at(tool.get("name"), f"{param}.name")
        schema = {
            "type": "object",
            "properties": {
                "input": {"type": "string", "description": _input_description(tool, param)}
            },
            "required": ["input"],
        }
        self._add(
            name,
            namespace,
            True,
            {"type": "function", "function": _function(name, tool, param, schema)},
            param,
        )

    def resolve(self, name: str, param: str, *, custom: bool) -> str:
        """The chat name of the tool a ``tool_choice`` names: its own name, or the name of a
        tool inside a namespace (when only one has it)."""
        if name in self.defs:
            return name
        found = [flat for flat, o in self.origins.items() if o.name == name and o.custom == custom]
        if len(found) == 1:
            return found[0]
        kind = "custom" if custom else "function"
        raise bad(f"Invalid '{param}': no {kind} tool named {name!r} is in 'tools'.", param)


def _function(
    name: str, tool: dict[str, Any], param: str, parameters: dict[str, Any]
) -> ChatFunction:
    description = tool.get("description")
    if description is None:
        return {"name": name, "parameters": parameters}
    description = string_at(description, f"{param}.description")
    return {"name": name, "description": description, "parameters": parameters}


def _input_description(tool: dict[str, Any], param: str) -> str:
    fmt = tool.get("format")
    if fmt is None:
        return "The tool's input: free-form text, passed to the tool as it is."
    fmt = object_at(fmt, f"{param}.format")
    kind = fmt.get("type")
    if kind == "text":
        return "The tool's input: free-form text, passed to the tool as it is."
    if kind != "grammar":
        raise bad(
            f"Invalid value for '{param}.format.type': expected 'text' or 'grammar'.",
            f"{param}.format.type",
        )
    syntax = string_at(fmt.get("syntax"), f"{param}.format.syntax")
    definition = string_at(fmt.get("definition"), f"{param}.format.definition")
    return (
        f"The tool's input: text that must match this {syntax} grammar, passed to the tool "
        f"as it is.\n{definition}"
    )


def _allowed(raw: dict[str, Any], tools: ToolSet) -> str:
    """``allowed_tools``: ``tools`` narrowed to the listed ones, and the mode as tool_choice."""
    mode = raw.get("mode")
    if mode not in ("auto", "required"):
        raise bad(
            "Invalid value for 'tool_choice.mode': expected 'auto' or 'required'.",
            "tool_choice.mode",
        )
    keep: set[str] = set()
    for j, entry in enumerate(array_at(raw.get("tools"), "tool_choice.tools")):
        p = f"tool_choice.tools[{j}]"
        entry = object_at(entry, p)
        kind = entry.get("type")
        if kind in ("function", "custom"):
            name = name_at(entry.get("name"), f"{p}.name")
            keep.add(tools.resolve(name, f"{p}.name", custom=kind == "custom"))
        elif kind == "namespace":
            namespace = name_at(entry.get("name"), f"{p}.name")
            keep.update(f for f, o in tools.origins.items() if o.namespace == namespace)
    tools.defs = {name: tool for name, tool in tools.defs.items() if name in keep}
    return str(mode)


def tool_choice(raw: Any, tools: ToolSet) -> Any:
    """The chat tool_choice; None when there is none to send (no tools left)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise bad(
                f"Invalid value for 'tool_choice': {raw!r}; expected 'auto', 'none', "
                "'required' or an object.",
                "tool_choice",
            )
        return raw
    raw = object_at(raw, "tool_choice")
    kind = raw.get("type")
    if not tools.defs:
        return None
    if kind in ("function", "custom"):
        name = name_at(raw.get("name"), "tool_choice.name")
        chat_name = tools.resolve(name, "tool_choice.name", custom=kind == "custom")
        return {"type": "function", "function": {"name": chat_name}}
    if kind == "allowed_tools":
        return _allowed(raw, tools)
    if isinstance(kind, str) and kind in HOSTED_TOOLS:
        # A hosted tool the backend cannot run: the model may still use the others.
        return "auto"
    raise bad(
        f"Invalid value for 'tool_choice.type': {kind!r} is not supported.", "tool_choice.type"
    )
