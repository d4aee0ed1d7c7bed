"""How the leaf Processes of a graph are wired, as Lava would connect them: Circuits expanded into
their members, a Circuit's input reaching its feeds, its output being its output member's port.

``sources`` maps ``id(InPort)`` of a leaf to the keys of what feeds it: ``id(OutPort)`` of a leaf
(Lava's InPort sums them), or an external key. ``procs.fused`` steps leaves wired so,
``procs.windows`` gives their ports windows. Kept beside the process folders, not inside: Lava's
compiler executes every module inside a process folder.
"""

from __future__ import annotations

import typing as ty

from lava_spikedattn.procs.circuit.process import Circuit


def member_sources(members: ty.Sequence, feeds: ty.Mapping[ty.Hashable, ty.Sequence]) -> dict[int, list]:
    """``sources`` for :class:`Stepper` of a closed set of members: each member InPort's
    connections from other members, plus the external key of every ``feeds`` entry listing it."""
    inside = {id(member) for member in members}
    sources: dict[int, list] = {}
    for member in members:
        for port in member.in_ports:
            sources[id(port)] = [id(src) for src in port.in_connections if id(src.process) in inside]
    for key, ports in feeds.items():
        for port in ports:
            sources[id(port)].append(key)
    return sources


def flatten(processes: ty.Sequence) -> tuple[list, dict[int, list]]:
    """A whole graph's leaf Processes (Circuits expanded into their members) and the
    :class:`Stepper` ``sources`` that wire them as Lava would (a Circuit's input reaches its
    feeds, its output is its output member's port)."""
    circuits = [p for p in processes if isinstance(p, Circuit)]
    leaves = [leaf for p in processes for leaf in (p.members if isinstance(p, Circuit) else [p])]
    output_of = {id(c.s_out): c.proc_params["output"] for c in circuits}

    def origin(port) -> int:
        return id(output_of.get(id(port), port))

    fed: dict[int, list] = {}
    for c in circuits:
        for outer, inner in ((c.s_in, c.proc_params["feeds"]), (c.trace_in, c.proc_params["trace_feeds"])):
            for port in inner:
                fed.setdefault(id(port), []).extend(origin(src) for src in outer.in_connections)
    sources = {}
    for leaf in leaves:
        for port in leaf.in_ports:
            # a Circuit's own s_in (connected to its feeds once a decomposed run built it) is in ``fed``
            inner = [src for src in port.in_connections if not isinstance(src.process, Circuit) or id(src) in output_of]
            sources[id(port)] = [origin(src) for src in inner] + fed.get(id(port), [])
    return leaves, sources
