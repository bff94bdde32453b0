"""Random access to the samples of a shard folder (WebDataset tars written by the synth stage).

The driver indexes every tar once (member offsets and each sample's JSON); workers then read any
sample with one seek. Random access lets every rank compute exactly which samples it owns at any
step, so the global batch does not depend on the worker count and a resumed run continues with
the very samples it would have seen. Each synthetic sample names its normal twin (``pair``), and
the anomaly stream is read in such (normal, synthetic) pairs.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from synth.shard_format import ShardError, load_manifest, verify_shards

SAMPLE_EXTENSIONS = ("png", "mask.png", "json")
"""The tar members of one sample: ``<key>.png``, ``<key>.mask.png``, ``<key>.json``."""


class DataError(InputError):
    """Training data that cannot be used as given (the message names the file)."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's files are: the tar and (offset, size) of each part."""

    key: str
    shard: str
    parts: dict[str, tuple[int, int]]
    category: str
    label: int
    conversation: list[dict[str, str]]
    source: str
    """Relative path of the normal training image the sample was made from."""
    pair: str
    """Key of the normal sample of the same source image (a normal sample names itself)."""

    @property
    def is_normal(self) -> bool:
        """The plain normal image (k=0), not a synthetic one or a failed synthesis' fallback."""
        return self.pair == self.key


@dataclass
class ShardIndex:
    """Every sample of a shard folder, in shard then key order."""

    root: Path
    samples: list[SampleRef]
    _files: dict[str, Any] = field(default_factory=dict, repr=False)
    _pairs: list[tuple[int, int]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> tuple[bytes, bytes]:
        """The PNG bytes of sample ``i``'s image and mask."""
        ref = self.samples[i]
        fh = self._files.get(ref.shard)
        if fh is None:
            fh = self._files[ref.shard] = open(ref.shard, "rb")  # noqa: SIM115 - kept open for reuse
        out = []
        for part in ("png", "mask.png"):
            offset, size = ref.parts[part]
            fh.seek(offset)
            out.append(fh.read(size))
        return out[0], out[1]

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples})

    def pairs(self) -> list[tuple[int, int]]:
        """(index of the normal twin, index of j) for every synthetic-or-fallback sample j, in index order.

        The unit of the anomaly stream: a normal image with its own synthetic version, as the
        reference batches them. A twin that is not in the index is a DataError.
        """
        if self._pairs is None:
            where = {ref.key: i for i, ref in enumerate(self.samples)}
            pairs = []
            for j, ref in enumerate(self.samples):
                if ref.is_normal:
                    continue
                twin = where.get(ref.pair)
                if twin is None or not self.samples[twin].is_normal:
                    raise DataError(
                        f"{ref.shard}: sample {ref.key!r} names pair {ref.pair!r}, which is not a normal "
                        f"sample in {self.root}; rerun `python -m pipeline synth` with --force"
                    )
                pairs.append((twin, j))
            self._pairs = pairs
        return self._pairs

    def normals_by_category(self) -> dict[str, list[int]]:
        """Per category, the indices of the normal (k=0) samples in index order (few-shot memory banks)."""
        out: dict[str, list[int]] = {}
        for i, ref in enumerate(self.samples):
            if ref.label == 0 and ref.is_normal:
                out.setdefault(ref.category, []).append(i)
        return out

    def __getstate__(self) -> dict[str, Any]:  # open files do not travel to Ray workers
        return {"root": self.root, "samples": self.samples, "_files": {}, "_pairs": self._pairs}


def shard_paths(root: str | Path, verify: bool = True) -> list[Path]:
    """The shards of a synth output folder in manifest order, after checking them against it.

    ``verify`` checks sizes, sha256 and sample counts (synth.shard_format.verify_shards); a ``.tar`` in
    the folder that the manifest does not list is an error too (it would be silently ignored).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"shard folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a shard folder (a file): {root}")
    if not any(root.glob("*.tar")):
        raise DataError(f"no .tar shards in {root} (write them with `python -m pipeline synth`)")
    try:
        manifest = verify_shards(root) if verify else load_manifest(root)
    except ShardError as exc:
        raise DataError(str(exc)) from exc
    listed = [root / entry["name"] for entry in manifest["shards"]]
    extra = sorted({p.name for p in root.glob("*.tar")} - {p.name for p in listed})
    if extra:
        raise DataError(f"{root}: shards not in manifest.json: {', '.join(extra)}")
    return listed


def shard_hashes(root: str | Path) -> list[str]:
    """The sha256 of each shard as the manifest records it, in order: the data a checkpoint was
    trained on (part of its resume fingerprint)."""
    try:
        manifest = load_manifest(root)
    except ShardError as exc:
        raise DataError(str(exc)) from exc
    return [entry["sha256"] for entry in manifest["shards"]]


def index_shards(root: str | Path, verify: bool = True) -> ShardIndex:
    """Index every sample; a shard that does not parse or a sample missing a part is an error.

    Shard paths are made absolute: Ray workers read them from another working directory."""
    root = Path(root).expanduser().resolve()
    samples: list[SampleRef] = []
    for path in shard_paths(root, verify):
        samples.extend(_index_tar(path))
    if not samples:
        raise DataError(f"the shards in {root} hold no samples")
    seen: dict[str, str] = {}
    for ref in samples:
        if ref.key in seen:
            raise DataError(f"{ref.shard}: sample key {ref.key!r} is also in {seen[ref.key]}")
        seen[ref.key] = ref.shard
    index = ShardIndex(root, samples)
    index.pairs()  # a dangling pair is an error now, not at some training step
    return index


def _index_tar(path: Path) -> list[SampleRef]:
    members: dict[str, dict[str, tuple[int, int]]] = {}
    metas: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                name = Path(m.name).name
                key, dot, ext = name.partition(".")
                if not dot or ext not in SAMPLE_EXTENSIONS:
                    expected = ",".join(SAMPLE_EXTENSIONS)
                    raise DataError(f"{path}: unexpected member {m.name!r} (expected <key>.{{{expected}}})")
                members.setdefault(key, {})[ext] = (m.offset_data, m.size)
                if ext == "json":
                    metas[key] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar shard ({exc})") from exc
    refs = []
    for key in sorted(members):
        missing = [p for p in SAMPLE_EXTENSIONS if p not in members[key]]
        if missing:
            raise DataError(f"{path}: sample {key!r} lacks {', '.join(missing)}")
        refs.append(_ref(path, key, members[key], metas[key]))
    return refs


def _ref(path: Path, key: str, parts: dict[str, tuple[int, int]], raw: bytes) -> SampleRef:
    where = f"{path}: sample {key!r}"
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{where}: bad JSON ({exc})") from exc
    for name in ("category", "label"):
        if name not in meta:
            raise DataError(f"{where}: JSON lacks {name!r}")
    for name in ("source", "pair"):
        if not isinstance(meta.get(name), str) or not meta[name]:
            raise DataError(
                f"{where}: JSON lacks {name!r} (written by a synth without normal/synthetic pairing); "
                "rerun `python -m pipeline synth` with --force"
            )
    conversation = meta.get("conversation")
    if not conversation:
        if "question" not in meta or "answer" not in meta:
            raise DataError(f"{where}: JSON has neither 'conversation' nor 'question'/'answer'")
        conversation = [
            {"from": "human", "value": meta["question"]},
            {"from": "gpt", "value": meta["answer"]},
        ]
    if meta["label"] not in (0, 1):
        raise DataError(f"{where}: label must be 0 or 1, got {meta['label']!r}")
    return SampleRef(
        key,
        str(path),
        parts,
        str(meta["category"]),
        int(meta["label"]),
        conversation,
        meta["source"],
        meta["pair"],
    )


def decode_png(data: bytes, mode: str) -> Any:
    """PNG bytes -> uint8 array: mode "RGB" (H, W, 3) or "L" (H, W)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert(mode))
