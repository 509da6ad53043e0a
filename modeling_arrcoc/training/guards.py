"""Cached frozen-SAM features and the non-finite-step guard.
"""

import hashlib
import os
import uuid
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

logger = logging.get_logger(__name__)


class SamFeatureCache:
    """Frozen-SAM patch features keyed by training-row index, computed the first time a row is seen. Only valid
    while SAM is frozen; the trainer refuses to build one otherwise.

    In memory (`cache_dir=None`): rows x patches x channels x bytes (demo 256 x 128 x 4 B = 128 KiB a row).

    On disk (`cache_dir` set): features are written as safetensors shards of `shard_rows` rows under
    `cache_dir/<fingerprint>/`, and read back memory-mapped (`safe_open`), so a later phase or a restarted run
    with the same frozen SAM computes none again, and host memory holds only the rows not yet written. The
    fingerprint hashes the SAM weights (names, dtypes, shapes, values), the pixel input shape and the cache
    dtype: any change writes a new directory instead of reusing stale features. Each row is also stored with a
    signature of its pixels (1024 evenly spaced values and the sum), checked on every read: a row index that
    now holds another image (another dataset, another order) is recomputed, never served stale. Shards are
    written to a temporary name and renamed, so an interrupted write leaves no partial shard; several processes
    may share one directory (each writes its own shards and reads the shards present when it starts).
    Call `flush()` to write the pending rows (the trainer does at the end of `train`).
    """

    SIGNATURE_SIZE = 1024

    def __init__(self, dtype: torch.dtype = torch.float32, cache_dir: str | None = None, shard_rows: int = 512):
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.shard_rows = shard_rows
        self.features = {}  # in memory: every row; on disk: rows computed but not yet written
        self.signatures = {}  # on disk only: pending rows' pixel signatures
        self.hits = 0
        self.misses = 0
        self.directory = None  # cache_dir/<fingerprint>, known at the first lookup
        self._stored = {}  # row -> shard path, for the rows on disk
        self._handles = {}  # shard path -> open safe_open handle (memory-mapped)

    @torch.no_grad()
    def lookup(self, model, pixel_values: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
        rows = sample_index.tolist()
        if self.cache_dir is not None and self.directory is None:
            self._open(model, pixel_values)
        found = {i: self._read(row, pixel_values[i]) for i, row in enumerate(rows)}
        missing = [i for i, feature in found.items() if feature is None]
        if missing:
            computed = model.model.get_patch_features(pixel_values[missing]).to(self.dtype)
            for i, feature in zip(missing, computed):
                found[i] = self.features[rows[i]] = feature
                if self.cache_dir is not None:
                    self.signatures[rows[i]] = _pixel_signature(pixel_values[i], self.SIGNATURE_SIZE)
            if self.cache_dir is not None and len(self.features) >= self.shard_rows:
                self.flush()
        self.misses += len(missing)
        self.hits += len(rows) - len(missing)
        return torch.stack([found[i].to(pixel_values.device) for i in range(len(rows))]).to(pixel_values.dtype)

    def _read(self, row: int, pixels: torch.Tensor):
        if row in self.features:
            if self.cache_dir is None or torch.equal(self.signatures[row], _pixel_signature(pixels, self.SIGNATURE_SIZE)):
                return self.features[row]
            return None
        path = self._stored.get(row)
        if path is None:
            return None
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = safe_open(path, framework="pt", device="cpu")
        if not torch.equal(handle.get_tensor(f"{row}.signature"), _pixel_signature(pixels, self.SIGNATURE_SIZE)):
            return None  # this row index now holds another image
        return handle.get_tensor(str(row))

    def _open(self, model, pixel_values: torch.Tensor):
        digest = sam_fingerprint(model.model.vision_tower, tuple(pixel_values.shape[1:]), self.dtype,
                                 model.config.vision_autocast_dtype)
        self.directory = os.path.join(self.cache_dir, digest)
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".safetensors"):
                path = os.path.join(self.directory, name)
                with safe_open(path, framework="pt", device="cpu") as shard:
                    self._stored.update({int(key): path for key in shard.keys() if key.isdigit()})  # noqa: SIM118

    def flush(self):
        """Write the pending rows as one shard (disk cache only)."""
        if self.cache_dir is None or not self.features or self.directory is None:
            return
        tensors = {}
        for row, feature in self.features.items():
            tensors[str(row)] = feature.detach().to("cpu").contiguous()
            tensors[f"{row}.signature"] = self.signatures[row]
        name = f"shard-{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
        path = os.path.join(self.directory, name)
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)
        self._stored.update({row: path for row in self.features})
        self.features.clear()
        self.signatures.clear()


def sam_fingerprint(vision_tower, pixel_shape: tuple, dtype: torch.dtype, autocast_dtype=None) -> str:
    """A hash of the vision tower's weights, the pixel input shape, the cache dtype and the dtype SAM computes in
    (`config.vision_autocast_dtype`): features computed under bf16 autocast are not a float32 run's."""
    autocast = f"|autocast {autocast_dtype}" if autocast_dtype else ""  # float32 caches keep their fingerprint
    digest = hashlib.sha256(f"{tuple(pixel_shape)}|{dtype}{autocast}".encode())
    for name, tensor in sorted(vision_tower.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def _pixel_signature(pixels: torch.Tensor, size: int) -> torch.Tensor:
    flat = pixels.detach().reshape(-1).float()
    picks = torch.linspace(0, flat.numel() - 1, min(size, flat.numel()), device=flat.device).long()
    return torch.cat([flat[picks], flat.sum(dtype=torch.float64).float().reshape(1)]).cpu()


def last_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N under `output_dir` (None without one, or without the directory)."""
    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_steps` consecutive optimizer steps with a non-finite loss or gradient."""


@dataclass
class NonFiniteGuard:
    limit: int
    total: int = 0
    consecutive: int = 0

    def good(self):
        self.consecutive = 0

    def bad(self, step: int, output_dir: str):
        self.total += 1
        self.consecutive += 1
        logger.warning(f"Step {step}: non-finite loss or gradient; optimizer update skipped "
                       f"({self.consecutive} in a row, limit {self.limit}).")
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive optimizer steps (up to step {step}) had a non-finite loss or "
                f"gradient, so training stopped. The last checkpoint ({last_checkpoint(output_dir)}) is intact: "
                "lower the learning rate or check the data, then resume_from_checkpoint."
            )


__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SamFeatureCache",
    "sam_fingerprint",
]
