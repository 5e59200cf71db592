"""Character-level text data (``data.name=text``): any plain-text file as a language-modelling set.

The samples DiveBatch counts are *sequences*: the file's characters are mapped to ids (the
vocabulary is the sorted set of characters of the whole file, as in Karpathy's char-rnn and
nanoGPT ``shakespeare_char``), the first :data:`TRAIN_FRACTION` of the ids are the training
part and the rest the validation part, and each part is cut into non-overlapping windows of
``data.seq_len`` input characters. Sample i is ``x = ids[i T : i T + T]`` with targets
``y = ids[i T + 1 : i T + T + 1]`` (the next character at every position), so n, epochs and
per-sample gradients mean what they mean for images: n = floor((N_part - 1) / T) sequences, an
epoch visits each once, a sample's loss is the mean cross-entropy of its T predictions.

Default file: ``../shared/data/tinyshakespeare.txt`` (1,115,394 characters, 65 distinct; md5
6fb458f1232090904fb40fe944165e91; Karpathy, 2015): 1,003,854 training and 111,540 validation
characters; with T = 64, 15,685 training and 1,742 validation sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from divebatch.data.bundle import DataBundle, DataError, DataNotFoundError, count, register

TRAIN_FRACTION = 0.9


def encode(text: str) -> tuple[np.ndarray, list[str]]:
    """Character ids of ``text`` and the vocabulary.

    Returns:
        (ids, vocab): ids (N,) int64 with ``vocab[ids[k]] == text[k]``; vocab the sorted distinct
        characters.
    """
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    return np.fromiter((lookup[ch] for ch in text), dtype=np.int64, count=len(text)), vocab


def sequences(ids: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping next-character samples of one part of the text.

    Args:
        ids: (N,) int64 character ids.
        seq_len: T, characters per sample (>= 1).
    Returns:
        (x, y), both (n, T) int64 with n = (N - 1) // T: x[i] = ids[iT : iT+T], y[i] = ids[iT+1 : iT+T+1].
    """
    n = (len(ids) - 1) // seq_len
    x = torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len).copy())
    y = torch.from_numpy(ids[1 : n * seq_len + 1].reshape(n, seq_len).copy())
    return x, y


def split_point(n_chars: int) -> int:
    """Index of the first validation character: the first 90 % (rounded down) are training text."""
    return int(n_chars * TRAIN_FRACTION)


@register("text")
def text_bundle(cfg) -> DataBundle:
    """The :class:`~divebatch.data.bundle.DataBundle` of a plain-text file (``data.name=text``).

    Args:
        cfg: the ``data`` config (``path``: the file; ``seq_len``: T).
    Returns:
        A bundle with ``num_classes`` = vocabulary size, ``in_channels`` = 1, ``image_size`` = T
        (the model's context), no normalisation (``mean``/``std`` None), no augmentation, and
        ``arrays`` = (train_x, train_y, test_x, test_y), each (n, T) int64 token ids.
    Raises:
        DataNotFoundError: the file does not exist. DataError: it is not UTF-8 text, or a part
            holds fewer than T + 1 characters (names the path, the sizes and ``data.seq_len``).
    """
    path, seq_len = Path(cfg.path), int(cfg.seq_len)
    if not path.is_file():
        raise DataNotFoundError(
            f"data.path={str(path)!r} is not a file; data.name=text needs a plain-text file, "
            f"e.g. ../shared/data/tinyshakespeare.txt"
        )
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"data.path={str(path)!r} is not UTF-8 text ({err}); data.name=text needs a plain-text file"
        ) from None
    cut = split_point(len(content))
    if cut - 1 < seq_len or len(content) - cut - 1 < seq_len:
        raise DataError(
            f"data.path={str(path)!r} has {count(len(content), 'character')}: {cut} for training and "
            f"{len(content) - cut} for validation; each part needs more than data.seq_len={seq_len} "
            f"{'character' if seq_len == 1 else 'characters'} (allowed: a longer file or a smaller data.seq_len)"
        )
    ids, vocab = encode(content)
    x_tr, y_tr = sequences(ids[:cut], seq_len)
    x_te, y_te = sequences(ids[cut:], seq_len)
    return DataBundle("text", len(vocab), 1, seq_len, None, None, "none", (x_tr, y_tr, x_te, y_te))
