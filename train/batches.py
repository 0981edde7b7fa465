"""Batches on the device: each epoch's seeded order, augmentation and the resize to the model's
input, a whole batch at a time.

Decoded small images stay whole on the training device; a batch is a gather from them, then a
random crop with padding and a flip, then normalise-and-resize (infer/preprocess.py), all there,
so a GPU never waits for a loader. Folders of large images go through a DataLoader with worker
processes instead, behind the same interface. Both share one epoch order and one batch count,
so a resumed run sees exactly the batches an uninterrupted one would.
"""

import torch

from train.datasets import DataError, Split
from infer.images import ImageError, load_image
from infer.preprocess import to_model_input


def epoch_order(count: int, epoch: int, seed: int, train: bool, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The sample order of `epoch` for this rank: for training a seeded shuffle (the same for a
    resumed run), strided across ranks; for evaluation the data set's own order."""
    if not train:
        return torch.arange(count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[rank::world_size]


def batch_count(count: int, batch_size: int, train: bool, world_size: int = 1) -> int:
    """Training drops the last partial batch (static shapes, for torch.compile and CUDA graphs);
    evaluation keeps it (every image counts)."""
    if train:
        return count // world_size // batch_size
    return -(-count // batch_size)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image (same size), then a coin-flip mirror.
    (B, 3, h, w) uint8 -> (B, 3, h, w) uint8, done for the whole batch with one gather."""
    b, _, h, w = images.shape
    device = images.device  # `generator` lives there too: no host-device copy, no sync
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=device)
    flips = torch.rand(b, generator=generator, device=device) < 0.5
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = (offsets[0][:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, h, 1)
    cols = (offsets[1][:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, w)
    batch = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(3, device=device)[None, :, None, None]
    crops = padded[batch, channel, rows, cols]  # (B, 3, h, w)
    return torch.where(flips[:, None, None, None], crops.flip(3), crops)


class TensorBatches:
    """Batches of a decoded split, kept on `device`; each epoch has its own seeded order and each
    step its own seeded augmentation, so a resumed run sees exactly the same batches."""

    skipped: dict[str, str] = {}  # (decoded before training: an unreadable image was reported then)

    def __init__(self, split: Split, batch_size: int, device, img_size: int, mean, std,
                 train: bool, seed: int = 0, crop_padding: int = 4, rank: int = 0, world_size: int = 1):
        self.device = device
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.batch_size, self.img_size, self.mean, self.std = batch_size, img_size, mean, std
        self.train, self.seed, self.crop_padding = train, seed, crop_padding
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return batch_count(len(self.labels), self.batch_size, self.train, self.world_size)

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.labels), epoch, self.seed, self.train, self.rank, self.world_size)

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (images, labels) for steps start_step.. of `epoch`; images normalised floats."""
        order = self.order(epoch).to(self.labels.device)
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = self.images[index]
            if self.train:
                generator = torch.Generator(self.device).manual_seed((self.seed * 1000 + epoch) * 1_000_000 + step)
                images = random_crop_flip(images, self.crop_padding, generator)
            yield to_model_input(images, self.img_size, self.mean, self.std), self.labels[index]


class _FileImages(torch.utils.data.Dataset):
    """Large images read from files: random resized crop + flip for training, resize for eval.

    A file can pass the header check (train/datasets.py) and still fail while decoding: a JPEG
    cut mid-scan. Without skip_bad that stops the run in one line; with it the next readable file
    takes its place in the batch (batches keep their size, steps their count, a resumed run its
    order) and the file is reported: each item is (image, label, the skipped files and reasons)."""

    def __init__(self, files, labels, img_size: int, train: bool, skip_bad: bool = False):
        from torchvision.transforms import v2

        self.files, self.labels, self.img_size, self.skip_bad = files, labels, img_size, skip_bad
        resize = v2.RandomResizedCrop(img_size, antialias=True) if train else v2.Resize((img_size, img_size), antialias=True)
        steps = [resize] + ([v2.RandomHorizontalFlip()] if train else [])
        self.transform = v2.Compose(steps)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        skipped = []
        for j in range(i, i + len(self.files)):  # i, then the files after it, wrapping around
            file = self.files[j % len(self.files)]
            try:
                image = load_image(file, self.img_size)
            except ImageError as error:  # passed the header check, failed while decoding (truncated data)
                if not self.skip_bad:
                    raise DataError(f"{file}: {error} (found while training; remove or fix it, or use "
                                    "--skip-bad-images)") from None
                skipped.append((str(file), str(error)))
                continue
            return self.transform(image), self.labels[j % len(self.files)], skipped
        raise DataError(f"no readable images (e.g. {skipped[0][0]}: {skipped[0][1]})")


def _collate(items):
    """(images (B, 3, S, S), labels (B,), the batch's skipped (file, reason) pairs)."""
    images, labels, skipped = zip(*items)
    return torch.stack(images), torch.as_tensor(labels), [pair for pairs in skipped for pair in pairs]


class FileBatches:
    """The same interface as TensorBatches, over a DataLoader with worker processes."""

    def __init__(self, split: Split, batch_size: int, device, img_size: int, mean, std,
                 train: bool, seed: int = 0, num_workers: int = 4, rank: int = 0, world_size: int = 1,
                 skip_bad: bool = False):
        self.dataset = _FileImages(split.files, split.labels.tolist(), img_size, train, skip_bad)
        self.skipped: dict[str, str] = {}  # file -> reason: the images that failed while decoding, skipped
        self.batch_size, self.device, self.img_size, self.mean, self.std = batch_size, device, img_size, mean, std
        self.train, self.seed, self.num_workers = train, seed, num_workers
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return batch_count(len(self.dataset), self.batch_size, self.train, self.world_size)

    def epoch(self, epoch: int, start_step: int = 0):
        order = epoch_order(len(self.dataset), epoch, self.seed, self.train, self.rank, self.world_size).tolist()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(start_step, len(self))]
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=False,
                                             collate_fn=_collate)
        try:
            for images, labels, skipped in loader:
                self.skipped.update(skipped)
                images = images.to(self.device, non_blocking=True)
                yield to_model_input(images, self.img_size, self.mean, self.std), labels.to(self.device, non_blocking=True)
        except DataError as error:  # raised in a worker: its message is the traceback; keep our line
            raise DataError(str(error).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


def make_batches(split: Split, cfg, device, mean, std, train: bool, rank: int = 0, world_size: int = 1):
    batch_size = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
    if split.images is not None:
        return TensorBatches(split, batch_size, device, cfg.img_size, mean, std, train, cfg.seed,
                             cfg.crop_padding, rank, world_size)
    return FileBatches(split, batch_size, device, cfg.img_size, mean, std, train, cfg.seed,
                       cfg.num_workers, rank, world_size, cfg.skip_bad_images)
