"""The validate pass: options, names, dangling nodes and misuse the bind step cannot see.

Graph in, `CompileState` out: the same graph plus each actor group's validated options and
unique deployment name, which the later passes read instead of validating again.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ...dag import (
    BranchNode,
    CallNode,
    ClassNode,
    DeploymentOptions,
    Graph,
    Op,
    SelectNode,
    batch_spec,
)
from ...dag.deployment import multiplex_specs
from ...dag.nodes import Node, find_nodes
from ...dag.options import SERVEGRAPH_OPTIONS
from ...errors import CompileError, OptionsError
from ..state import CompileState, Group, spec_of_group

PASS = "validate"

_OPTION_HINTS = {
    "num_replicas": "use an integer >= 1, or 'auto' with autoscaling_config",
    "autoscaling_config": "keep min_replicas <= initial_replicas <= max_replicas",
    "ray_actor_options": "num_gpus is a fraction <= 1 or a whole number; num_cpus >= 0",
    "max_ongoing_requests": "use an integer >= 1",
    "gpu_memory": "give bytes or a size such as '6GiB'",
    "timeout_s": "give the seconds one call may take, e.g. timeout_s=2.5, or leave it out for "
                 "no limit",
    "max_retries": "give how many times a failed call is tried again, e.g. max_retries=2 "
                   "(only for idempotent stages)",
}


def validate(graph: Graph) -> CompileState:
    calls = [node for node in graph.nodes if isinstance(node, CallNode)]
    groups: dict[int, Group] = {}
    for node in calls:
        groups.setdefault(id(node.call.group), node.call.group)
    options = {key: _options(group) for key, group in groups.items()}
    names = unique_names(list(groups.values()), options)
    _check_dangling(graph)
    for node in calls:
        _check_batching(node)
    for node in graph.nodes:
        if isinstance(node, SelectNode):
            _check_select(node)
    _check_streams(graph, calls)
    _check_branch_names(graph)
    _check_retries(calls, options, names)
    _check_multiplexed(list(groups.values()), calls, names)
    for group in groups.values():
        _check_user_config(group, options[id(group)], names[id(group)])
        _check_version(group, options[id(group)], names[id(group)])
    return CompileState(graph, tuple(groups.values()), names,
                        {names[key]: value for key, value in options.items()})


def _options(group: Group) -> DeploymentOptions:
    spec = spec_of_group(group)
    try:
        return DeploymentOptions.model_validate(dict(spec.raw_options))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        top = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            known = list(DeploymentOptions.model_fields)
            close = difflib.get_close_matches(top, known, n=1)
            raise OptionsError(
                f"unknown option {top!r}", stage=spec.name, site=spec.site,
                hint=f"did you mean {close[0]!r}?" if close
                else "options are ray.serve.deployment's keywords plus servegraph's own: "
                f"{', '.join(sorted(SERVEGRAPH_OPTIONS))}",
            ) from None
        message = error["msg"].removeprefix("Value error, ")
        raise OptionsError(
            f"option {field}={error.get('input')!r}: {message}" if field
            else f"options: {message}",
            stage=spec.name, site=spec.site,
            hint=_OPTION_HINTS.get(top, "see ray.serve.deployment for this option's values"),
        ) from None


def unique_names(groups: list[Group], options: dict[int, DeploymentOptions]) -> dict[int, str]:
    """Each group's deployment name: its own, else the stage's, suffixed `_1`, `_2`, ... past
    the names taken. The names taken only grow, so each base resumes at its last suffix (a
    pipeline of 10,000 groups of one class stays linear)."""
    names: dict[int, str] = {}
    taken: dict[str, Group] = {}
    next_suffix: dict[str, int] = {}
    for group in groups:
        spec = spec_of_group(group)
        explicit = options[id(group)].name
        if explicit is not None and explicit in taken:
            raise OptionsError(
                f"two deployments are named {explicit!r}", stage=explicit, site=spec.site,
                hint="give each bound class its own name: Stage.options(name='...').bind()",
            )
        base = explicit or spec.name
        name, suffix = base, next_suffix.get(base, 1)
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        next_suffix[base] = suffix
        taken[name] = group
        names[id(group)] = name
    return names


def _check_dangling(graph: Graph) -> None:
    reached = {node.id for node in graph.nodes}
    called = {id(node.call.group) for node in graph.nodes if isinstance(node, CallNode)}
    for node in graph.declared:
        if node.id in reached or isinstance(node, SelectNode):
            continue
        if isinstance(node, ClassNode):
            if id(node) in called:
                continue
            raise CompileError(
                f"{node.label} is bound but none of its methods is called on the way to an "
                "output", stage=node.label, pass_name=PASS, site=node.site,
                hint=f"call a method and use the result: {node.label.lower()}.method.bind(...),"
                " or remove the binding",
            )
        raise CompileError(
            "this call reaches no output of the graph", stage=node.label, pass_name=PASS,
            site=node.site,
            hint="pass its result to a stage that leads to an output, add it to "
            "sg.Graph's outputs, or remove it",
        )


def _check_batching(node: CallNode) -> None:
    fn = node.call.function
    if batch_spec(fn) is not None and not inspect.iscoroutinefunction(fn):
        raise CompileError(
            f"{node.call.label} is batched with sg.batch but is not `async def`",
            stage=node.label, pass_name=PASS, site=node.site,
            hint="declare the batched method `async def` (as serve.batch requires)",
        )


def _check_select(node: SelectNode) -> None:
    model: Any = node.root.model
    if node.args[0] is not node.root or node.target.kind != "attr" or model is None:
        return
    if isinstance(model, type) and issubclass(model, BaseModel):
        fields = list(model.model_fields)
        if node.target.key not in fields:
            close = difflib.get_close_matches(str(node.target.key), fields, n=1)
            raise CompileError(
                f"the input model {model.__name__} has no field {node.target.key!r}",
                stage=node.label, pass_name=PASS, site=node.site,
                hint=f"did you mean {close[0]!r}?" if close
                else f"fields: {', '.join(fields)}",
            )



def is_stream(node: Any) -> bool:
    """A call of an async generator stage: its value is a stream of chunks."""
    return isinstance(node, CallNode) and inspect.isasyncgenfunction(node.call.function)


def _check_streams(graph: Graph, calls: list[CallNode]) -> None:
    """A stream is read once, chunk by chunk: by one stage, or as the pipeline's whole output;
    `sg.map` and `sg.batch` take whole values, not streams."""
    streams = {node.id: node for node in calls if is_stream(node)}
    if not streams:
        return
    readers: dict[int, list[Any]] = {key: [] for key in streams}
    for node in graph.nodes:
        for source in find_nodes((node.args, node.kwargs)):
            if source.id not in streams:
                continue
            if isinstance(node, BranchNode):
                raise CompileError(
                    f"the stream of {source.label} is an argument of {node.label}: control "
                    "flow picks between whole values", stage=node.label, pass_name=PASS,
                    site=node.site, hint="branch on stages that return a value, or read the "
                    "stream in a stage first")
            if isinstance(node, CallNode) and node.op is Op.MAP and node.args[0] is source:
                raise CompileError(
                    f"sg.map over the stream of {source.label}: map needs the whole list",
                    stage=node.label, pass_name=PASS, site=node.site,
                    hint="collect the stream into a list in a stage first, or read it "
                    "chunk by chunk in an async-for stage")
            readers[source.id].append(node)
    outputs = list(find_nodes(graph.outputs))
    for source in outputs:
        if source.id in streams:
            if graph.outputs is not source:
                raise CompileError(
                    f"the stream of {source.label} is one of several outputs: a streamed "
                    "response carries one stream and nothing else",
                    stage=source.label, pass_name=PASS, site=graph.site,
                    hint="make the stream the graph's only output, or read it in a stage "
                    "that returns a value")
            readers[source.id].append(graph)
    for key, node in streams.items():
        if node.op is Op.MAP:
            raise CompileError(
                f"sg.map over the streaming stage {node.call.label}: each call would give a "
                "stream, and a list of streams cannot be sent on", stage=node.label,
                pass_name=PASS, site=node.site,
                hint="map a stage that returns a value, or stream from one call")
        if batch_spec(node.call.function) is not None:
            raise CompileError(
                f"{node.call.label} is an async generator and batched with sg.batch",
                stage=node.label, pass_name=PASS, site=node.site,
                hint="drop sg.batch from the streaming method (batch the model call "
                "inside it instead)")
        if len(readers[key]) > 1:
            second = readers[key][1]
            raise CompileError(
                f"the stream of {node.label} is read {len(readers[key])} times: a stream "
                "can be read once, chunk by chunk",
                stage=node.label, pass_name=PASS, site=second.site,
                hint="give it one reader; a reader that needs the chunks twice should "
                "collect them into a list")


def _check_branch_names(graph: Graph) -> None:
    """A branch's name keys its weights in the driver's user_config and names it in traces:
    two named alike would be one."""
    seen: dict[str, BranchNode] = {}
    for node in graph.nodes:
        if isinstance(node, BranchNode) and node.branching.name is not None:
            first = seen.setdefault(node.branching.name, node)
            if first is not node:
                raise CompileError(
                    f"two branches are named {node.branching.name!r} (the first at "
                    f"{first.site})", stage=node.label, pass_name=PASS, site=node.site,
                    hint="give each switch, when, split, fallback and shadow its own name=")


def _check_user_config(group: Group, options: DeploymentOptions, name: str) -> None:
    """Serve hands `user_config` to the replica's `reconfigure` method (after `__init__`, and
    again on each redeploy that changes it): only a class that has one can take it."""
    if options.user_config is None:
        return
    spec = spec_of_group(group)
    if spec.is_function:
        raise OptionsError(
            f"user_config on the function stage {spec.name}: Serve hands user_config to a "
            "class's `reconfigure` method", stage=name, site=spec.site,
            hint="make the stage a class with a `reconfigure(self, config)` method, or drop "
            "user_config")
    if not callable(getattr(spec.target, "reconfigure", None)):
        raise OptionsError(
            f"user_config on {spec.name}, which has no `reconfigure` method to receive it",
            stage=name, site=spec.site,
            hint=f"add `def reconfigure(self, config)` to {spec.name} (sync or async), or "
            "drop user_config")


def _check_version(group: Group, options: DeploymentOptions, name: str) -> None:
    """`version` is a keyword of `ray.serve.deployment`, but Serve 2.60 manages versions itself
    and raises at deploy time when one is given: refuse it now, with the stage's line."""
    if options.version is not None:
        raise OptionsError(
            f"version={options.version!r}: Ray Serve manages deployment versions itself and "
            "refuses this option when the deployment is created",
            stage=name, site=spec_of_group(group).site,
            hint="drop version; a `serve deploy` config with a changed user_config updates "
            "running replicas in place")


def _check_retries(calls: list[CallNode], options: Mapping[int, DeploymentOptions],
                   names: Mapping[int, str]) -> None:
    """A retry calls the stage again with the same arguments, so neither a stream it yields
    (its chunks already went downstream) nor a stream it reads (read once) can take part."""
    for node in calls:
        if not options[id(node.call.group)].max_retries:
            continue
        stage = names[id(node.call.group)]
        if is_stream(node):
            raise CompileError(
                f"max_retries on the streaming stage {node.call.label}: chunks it already sent "
                "downstream cannot be taken back, so a stream is never retried",
                stage=stage, pass_name=PASS, site=node.site,
                hint="drop max_retries (timeout_s still bounds the wait for each chunk), or "
                "retry inside the generator before it yields")
        source = next((up for up in node.upstream() if is_stream(up)), None)
        if source is not None:
            raise CompileError(
                f"max_retries on {node.call.label}, which reads the stream of {source.label}: "
                "a stream is read once, so the call cannot be made again",
                stage=stage, pass_name=PASS, site=node.site,
                hint=f"drop max_retries from {stage}, or collect the stream into a list in "
                "a stage before it")


def _check_multiplexed(groups: list[Group], calls: list[CallNode],
                       names: Mapping[int, str]) -> None:
    """A class stage has one `@sg.multiplexed` loader at most; a call naming a model id
    (`method.options(model_id=...)`) goes to a stage that has one, takes whole values (no
    stream, no `sg.batch`: a batch would mix models), and reads its id from a whole value."""
    for group in groups:
        spec = spec_of_group(group)
        loaders = [] if spec.is_function else multiplex_specs(spec.target)
        if len(loaders) > 1:
            raise CompileError(
                f"{spec.name} has {len(loaders)} @sg.multiplexed loaders ("
                f"{', '.join(loader.name for loader in loaders)}): a replica keeps one set of "
                "models", stage=names[id(group)], pass_name=PASS, site=loaders[1].site,
                hint="keep one loader; load several parts of a model in it and return them "
                "together")
    for node in calls:
        if node.call.model_id is not None:
            _check_model_id_call(node, names[id(node.call.group)])


def _check_model_id_call(node: CallNode, stage: str) -> None:
    spec = node.call.spec
    if not multiplex_specs(spec.target):
        raise CompileError(
            f"{node.call.label} is called with a model_id, but {spec.name} declares no "
            "@sg.multiplexed loader", stage=stage, pass_name=PASS, site=node.site,
            hint=f"add `@sg.multiplexed(max_models_per_replica=3) async def load(self, "
            f"model_id)` to {spec.name}, or drop .options(model_id=...)")
    problem = None
    if is_stream(node):
        problem = "streams its output: a stream is not served per model"
    elif batch_spec(node.call.function) is not None:
        problem = "is batched with sg.batch: one batch would mix calls for several models"
    source = node.call.model_id
    if isinstance(source, Node) and is_stream(source):
        problem = f"takes its model id from the stream of {source.label}"
    if problem is not None:
        raise CompileError(
            f"{node.call.label} {problem}", stage=stage, pass_name=PASS, site=node.site,
            hint="give model_id to a method that returns one value and is not batched, "
            "from a node that gives one string")
