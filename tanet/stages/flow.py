"""Stage ``flow``: optical flow from each LR reference frame to its 2N-2 neighbours.

For every LR set, clip and reference frame t, flows to the frames t-(N-1) .. t+(N-1)
(t excluded) are stored compactly as float16 in ``<out>/<lr set>/<clip_id>.npz``, with the
rectified integer shifts of a block grid (``flow.block``) as int16.
Neighbour indices are clamped at the clip's ends, as the upscaler replicates edge frames;
a neighbour clamped onto the reference itself has zero flow.

Arrays in each file: ``flow (F, 2N-2, h, w, 2) float16``, ``shifts (F, 2N-2, nby, nbx, 2)
int16``, ``offsets (2N-2,) int16`` (time offsets of the neighbours, in time order).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tanet.config import FlowParams
from tanet.errors import TanetError
from tanet.io.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
from tanet.io.clips import lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb
from tanet.ops.color import planes
from tanet.ops.degrade import DegradationKind
from tanet.ops.optical_flow import DisPreset, FlowMethod, estimate_flow
from tanet.ops.rof import block_shifts, neighbour_offsets, window_indices
from tanet.stages.parallel import Mapper, serial_map


def load_y_frames(folder: Path) -> np.ndarray:
    """All frames of a folder as Y planes ``(F, H, W)`` uint8."""
    return np.stack([planes(read_rgb(f), 1)[0] for f in list_frames(folder)])


def flow_clip(
    lr_dir: Path, out_file: Path, num_branches: int, block: int, method: FlowMethod, preset: DisPreset
) -> int:
    """Computes and stores the flows and block shifts of one LR clip.

    Returns:
        The number of flow fields computed (a neighbour clamped onto a frame already done
        for this reference reuses its flow).
    """
    y = load_y_frames(lr_dir)
    f, h, w = y.shape
    offsets = neighbour_offsets(num_branches)
    nby, nbx = -(-h // block), -(-w // block)
    flows = np.zeros((f, len(offsets), h, w, 2), np.float16)
    shifts = np.zeros((f, len(offsets), nby, nbx, 2), np.int16)
    computed = 0
    r = num_branches - 1
    for t in range(f):
        done: dict[int, int] = {}  # neighbour frame -> slot already holding its flow (clamped ends repeat)
        window = window_indices(t, 2 * r + 1, f)
        for j, s in enumerate(window[:r] + window[r + 1 :]):  # the neighbours, in the order of ``offsets``
            if s == t:
                continue
            if s in done:
                flows[t, j], shifts[t, j] = flows[t, done[s]], shifts[t, done[s]]
                continue
            flow = estimate_flow(y[t], y[s], method, preset)
            flows[t, j] = flow
            shifts[t, j] = block_shifts(flow, block)
            done[s] = j
            computed += 1
    buf = io.BytesIO()
    np.savez_compressed(buf, flow=flows, shifts=shifts, offsets=offsets, block=np.int16(block))
    atomic_write_bytes(out_file, buf.getvalue())
    return computed


PARAMS = {
    "flow": "flow",
    "scales": "degrade.scales",
    "kinds": "degrade.kinds",
    "num_branches": "model.num_branches",
}


def run_flow(
    flow: FlowParams,
    *,
    scales: Sequence[int],
    kinds: Sequence[DegradationKind],
    num_branches: int,
    clips_dir: Path,
    lr_dir: Path,
    out_dir: Path,
    mapper: Mapper = serial_map,
) -> dict[str, int]:
    """Computes flows for every (LR set, clip).

    Args:
        flow: the ``flow`` section.
        scales: ``degrade.scales``, the LR sets' factors.
        kinds: ``degrade.kinds``, the LR sets' degradations.
        num_branches: ``model.num_branches`` N (flows to the 2N-2 neighbours).
        clips_dir: ingest output (for the clip list).
        lr_dir: degrade output.
        out_dir: this stage's output folder (replaced whole on success).
        mapper: fan-out over (LR set, clip) jobs.

    Returns:
        Flow fields computed per LR set.
    """
    clips = read_manifest(clips_dir)
    sets = [lr_set_name(s, k) for s in scales for k in kinds]
    jobs = [(name, c.clip_id) for name in sets for c in clips]
    with atomic_dir(out_dir) as tmp:

        def run(job: tuple[str, str]) -> int:
            name, clip_id = job
            return flow_clip(
                lr_dir / name / clip_id,
                tmp / name / f"{clip_id}.npz",
                num_branches,
                flow.block,
                flow.method,
                flow.dis_preset,
            )

        results = mapper(run, jobs, [f"{n}/{c}" for n, c in jobs])
        counts: dict[str, int] = {}
        for (name, clip_id), res in zip(jobs, results):
            if isinstance(res, BaseException):
                raise TanetError(f"flow: {name}/{clip_id} failed: {res}") from res
            counts[name] = counts.get(name, 0) + res
        atomic_write_json(tmp / "summary.json", {"flows": counts, "method": flow.method})
    return counts
