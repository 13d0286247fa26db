"""The data of one run: pretraining images of ``--dataset`` and, when
``--eval-dataset`` is given, the labelled splits of another dataset for the evaluators."""

from __future__ import annotations

from ssl_bench.core.errors import DataError
from ssl_bench.datasets.base import ImageData
from ssl_bench.datasets.imagefolder import IMAGEFOLDER_LAYOUT, unlabeled_only


def with_eval_data(data: ImageData, labelled: ImageData | None, dataset: str,
                   eval_dataset: str | None) -> ImageData:
    """``data``'s pretraining images with ``labelled``'s train/test splits.

    Args:
        data: ``--dataset`` as loaded; its pretraining images (its ``unlabeled`` split
            when it has one, else its train split) are what the task pretrains on.
        labelled: ``--eval-dataset`` as loaded at ``data``'s image size, or ``None``
            to keep ``data``'s own labelled splits.
        dataset, eval_dataset: the names given, for messages.

    Returns:
        :class:`ImageData` named like ``data``; with ``labelled``, its
        ``pretrain_images`` are ``data``'s pretraining images (the same tensor, no copy)
        and its labelled splits and class names ``labelled``'s.

    Raises:
        DataError: ``data`` has no labelled images and ``labelled`` is ``None``,
            ``labelled`` has no labelled images, or their channel counts or sizes differ.
    """
    if labelled is None:
        if not data.labelled:
            raise DataError(unlabeled_only(dataset, len(data.pretraining), data.pretrain_split))
        return data
    if not labelled.labelled:
        raise DataError(f"--eval-dataset {eval_dataset} holds no labelled images; give a "
                        f"labelled dataset, e.g. imagefolder:<root> with {IMAGEFOLDER_LAYOUT}")
    if labelled.channels != data.channels or labelled.image_size != data.image_size:
        raise DataError(f"--eval-dataset {eval_dataset} has {labelled.channels} channel(s) at "
                        f"{labelled.image_size} px but --dataset {dataset} has "
                        f"{data.channels} at {data.image_size} px; evaluators must see images "
                        "of the kind the backbone was pretrained on")
    return ImageData(data.name, labelled.train_images, labelled.train_labels,
                     labelled.test_images, labelled.test_labels, labelled.class_names,
                     data.hflip, data.pretraining, data.pretrain_split)
