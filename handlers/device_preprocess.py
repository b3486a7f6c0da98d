"""A batch of photos → model input on the worker's device: JPEGs decoded there in one call, the rest on the CPU.

On a GPU worker Pillow on one CPU core is the bottleneck, not the model. Here the plain JPEGs of a batch
(8-bit colour, upright, complete) are decoded by one batched ``torchvision.io.decode_jpeg`` call on the device
and resized, cropped and normalised there as tensor ops; everything else (other formats, EXIF-rotated,
CMYK or grayscale JPEGs, anything the device decoder refuses) goes through :mod:`image_decoding` exactly as
on a CPU worker. Limits are checked from the header first, for every item, as there. The geometry is the CPU
path's (short side to ``resize``, centre ``crop``, antialiased bilinear, 8-bit rounding), so both give the
same tensor up to decoder rounding (docs/gpu.md states the measured tolerance). No TorchServe imports.
"""

from __future__ import annotations

from concurrent.futures import Executor

import torch
import torch.nn.functional as F
from image_decoding import DecodeLimits, ImageError, TensorSpec, image_to_tensor, open_image
from torchvision.io import ImageReadMode, decode_jpeg

EXIF_ORIENTATION = 0x0112
JPEG_END = b"\xff\xd9"
# Beyond this resized area (extreme aspect ratios) the CPU path, which resamples only the cropped region,
# is the cheaper one: resizing a 1×16384 strip whole would take gigabytes.
MAX_RESIZED_AREA = 4
# Float elements per resize call: bounds device memory when a batch holds many large photos of one size.
MAX_FLOAT_ELEMENTS = 1 << 28

ItemErrors = list[ImageError | None]


def geometry(width: int, height: int, spec: TensorSpec) -> tuple[int, int, int, int]:
    """The CPU path's resize and crop: (resized width, resized height, crop left, crop top)."""
    scale = spec.resize / min(width, height)
    new_width, new_height = max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale))
    return new_width, new_height, (new_width - spec.crop) // 2, (new_height - spec.crop) // 2


def device_decodable(data: bytes, spec: TensorSpec, limits: DecodeLimits) -> bool:
    """Whether ``data`` is a JPEG the device path turns into what Pillow would; raises ImageError past a limit."""
    img = open_image(data, limits)
    if img.format != "JPEG" or img.mode != "RGB" or not data.endswith(JPEG_END):
        return False  # CMYK / grayscale / MPO, or truncated: the CPU path converts or refuses it as today
    try:
        if img.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
            return False
    except Exception:  # noqa: BLE001 - a malformed EXIF block: let the CPU path decide what it means
        return False
    new_width, new_height, _, _ = geometry(*img.size, spec)
    return new_width * new_height <= MAX_RESIZED_AREA * spec.resize**2


def to_device(
    batch: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.channels_last
) -> torch.Tensor:
    """A CPU batch on ``device`` in ``memory_format``; through pinned memory, without blocking, to a GPU."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True, memory_format=memory_format)


def cpu_batch(
    photos: list[bytes], spec: TensorSpec, limits: DecodeLimits, pool: Executor | None = None
) -> tuple[list[torch.Tensor], ItemErrors]:
    """Each photo through Pillow (:func:`image_decoding.image_to_tensor`): its tensor or its error.

    With a ``pool`` the photos of a batch are decoded in parallel on its threads (one photo stays on this one).
    """

    def one(photo: bytes) -> torch.Tensor | ImageError:
        try:
            return image_to_tensor(photo, spec, limits)
        except ImageError as exc:
            return exc

    results = list(pool.map(one, photos)) if pool is not None and len(photos) > 1 else [one(p) for p in photos]
    tensors = [r for r in results if isinstance(r, torch.Tensor)]
    errors: ItemErrors = [r if isinstance(r, ImageError) else None for r in results]
    return tensors, errors


class DevicePreprocessor:
    """Turns a batch of photo bytes into one normalised (N, 3, crop, crop) tensor on ``device``."""

    def __init__(self, spec: TensorSpec, limits: DecodeLimits, device: torch.device) -> None:
        self.spec, self.limits, self.device = spec, limits, device
        self.mean = torch.tensor(spec.mean, device=device).mul(255.0).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).mul(255.0).view(1, 3, 1, 1)

    def __call__(self, photos: list[bytes]) -> tuple[torch.Tensor | None, ItemErrors]:
        """The batch of the usable photos, in order (None when there are none), and each photo's error."""
        errors: ItemErrors = [None] * len(photos)
        jpegs: list[int] = []
        cpu: list[int] = []
        for i, data in enumerate(photos):
            try:
                (jpegs if device_decodable(data, self.spec, self.limits) else cpu).append(i)
            except ImageError as exc:
                errors[i] = exc
        rows: dict[int, torch.Tensor] = {}
        decoded = self.decode([photos[i] for i in jpegs])
        cpu.extend(i for i, image in zip(jpegs, decoded) if image is None)
        rows.update(self.resize_crop({i: image for i, image in zip(jpegs, decoded) if image is not None}))
        if cpu:
            tensors, cpu_errors = cpu_batch([photos[i] for i in sorted(cpu)], self.spec, self.limits)
            good = [i for i, error in zip(sorted(cpu), cpu_errors) if error is None]
            for i, error in zip(sorted(cpu), cpu_errors):
                errors[i] = error
            if tensors:
                rows.update(zip(good, to_device(torch.stack(tensors), self.device).unbind(0)))
        if not rows:
            return None, errors
        batch = torch.stack([rows[i] for i in sorted(rows)])
        return batch.contiguous(memory_format=torch.channels_last), errors

    def decode(self, jpegs: list[bytes]) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 images on the device, one batched call; None for each JPEG the decoder refuses."""
        if not jpegs:
            return []
        pin = self.device.type == "cuda"
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
        encoded = [t.pin_memory() for t in encoded] if pin else encoded
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
        except (RuntimeError, ValueError):
            pass  # one bad item fails the batched call: find it, decode the others
        images: list[torch.Tensor | None] = []
        for tensor in encoded:
            try:
                images.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
            except (RuntimeError, ValueError):
                images.append(None)
        return images

    def resize_crop(self, images: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Resize (antialiased bilinear), centre-crop, round to 8 bits and normalise; one call per image size."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in images.items():
            by_size.setdefault((image.shape[1], image.shape[2]), []).append(i)
        crop = self.spec.crop
        rows: dict[int, torch.Tensor] = {}
        for (height, width), members in by_size.items():
            new_width, new_height, left, top = geometry(width, height, self.spec)
            step = max(1, MAX_FLOAT_ELEMENTS // (3 * max(height * width, new_height * new_width)))
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                batch = torch.stack([images[i] for i in chunk]).float()
                batch = F.interpolate(batch, size=(new_height, new_width), mode="bilinear", antialias=True)
                batch = batch[:, :, top : top + crop, left : left + crop].round_().clamp_(0, 255)
                rows.update(zip(chunk, ((batch - self.mean) / self.std).unbind(0)))
        return rows
