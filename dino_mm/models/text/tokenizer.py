"""The dino.txt text tokenizer: OpenAI CLIP's byte-level BPE over ``bpe_simple_vocab_16e6.txt.gz``.

DINOv3's dino.txt text tower reads the token ids of OpenAI CLIP's ``SimpleTokenizer`` (vocabulary of 49408,
``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, context of 77). Rather than carry a third copy of that
code, :class:`CLIPTokenizer` reuses ``open_clip``'s ``SimpleTokenizer`` (MIT, a copy of OpenAI's), which is well
kept and ships the same vocabulary file as the official DINOv3 code, so no download is ever needed.

Where ``open_clip``'s ``SimpleTokenizer`` (3.3.0) is not the official one, :class:`CLIPTokenizer` pins it back:

* special tokens: open_clip names them ``<start_of_text>`` / ``<end_of_text>`` and recognises those strings in
  the text; the official code names them ``<|startoftext|>`` / ``<|endoftext|>`` (same ids 49406 / 49407) and
  recognises those (``'a<|endoftext|>b'`` -> ``[320, 49407, 321]``). The official names and pre-tokenizer
  pattern are restored.
* truncation: open_clip can drop tokens at random (``reduction_mask``); it is pinned off, so a long text is
  cut to ``context_length`` tokens and its last token replaced by ``<|endoftext|>``, as in the official code.
* cleaning: open_clip's ``clean='lower'`` collapses whitespace with ``str.split()``, the official code with
  ``regex`` ``\\s+``. Those differ only on U+001C..U+001F, which ``ftfy.fix_text`` removes first, so the results
  agree; :meth:`CLIPTokenizer.clean` is nevertheless the official formulation, not open_clip's.
"""
import gzip
import html
import os
import re as _re
import zlib
from collections.abc import Iterable
from typing import List, Optional, Sequence, Union

import ftfy
import regex
import torch

__all__ = ['CLIPTokenizer', 'clean_text', 'default_bpe_path']

SOT_TOKEN = '<|startoftext|>'
EOT_TOKEN = '<|endoftext|>'
VOCAB_SIZE = 49408
# The merges OpenAI CLIP reads: lines 1 .. 49152 - 256 - 2 of the file (line 0 is a version header).
NUM_MERGES = 49152 - 256 - 2
# OpenAI CLIP's pre-tokenizer (dinov3/thirdparty/CLIP/clip/simple_tokenizer.py), special tokens included.
_OFFICIAL_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_WHITESPACE = regex.compile(r'\s+')
_URL = _re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')
_BPE_HINT = ("pass bpe_path=None for open_clip's copy of CLIP's bpe_simple_vocab_16e6.txt.gz, or the local path "
             'of that file')


def default_bpe_path() -> str:
    """The ``bpe_simple_vocab_16e6.txt.gz`` shipped inside the ``open_clip`` package."""
    from open_clip import tokenizer as _oc  # imported on use: it costs ~1 s at start-up
    return _oc.default_bpe()


def clean_text(text: str) -> str:
    """The official CLIP / dino.txt text cleaning.

    ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse every ``regex`` ``\\s+`` run to one space,
    strip, lower-case.

    Args:
        text (str): Raw text.

    Returns:
        str: The cleaned text that the BPE pre-tokenizer splits.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(' ', text).strip().lower()


def _check_bpe_file(bpe_path: Union[str, os.PathLike]) -> str:
    """Check that ``bpe_path`` is a local, gzipped CLIP BPE merges file and return it as a string."""
    if not isinstance(bpe_path, (str, os.PathLike)):
        raise TypeError(f'bpe_path must be a local file path (str or os.PathLike), got '
                        f'{type(bpe_path).__name__}; {_BPE_HINT}.')
    path = os.fspath(bpe_path)
    if _URL.match(path):
        raise ValueError(f'bpe_path {path!r} is a URL: dino_mm never downloads; fetch the file yourself and '
                         f'pass its local path, or {_BPE_HINT}.')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'BPE vocabulary file {path!r} does not exist (or is not a file); {_BPE_HINT}.')
    try:
        with gzip.open(path, 'rb') as f:
            lines = f.read().decode('utf-8').split('\n')
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f'BPE vocabulary file {path!r} is not a gzipped UTF-8 text file ({exc}); '
                         f'{_BPE_HINT}.') from exc
    merges = lines[1:NUM_MERGES + 1]
    bad = next((i for i, m in enumerate(merges, 1) if len(m.split()) != 2), None)
    if len(merges) < NUM_MERGES or bad is not None:
        where = f'line {bad} is {merges[bad - 1]!r}' if bad is not None else f'it has {len(merges)} merges'
        raise ValueError(f'{path!r} is not a CLIP BPE merges file: CLIP reads {NUM_MERGES} lines "a b" after a '
                         f'header, but {where}; {_BPE_HINT}.')
    return path


def _check_context_length(context_length: int) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f'context_length must be an int >= 2 (room for <|startoftext|> and <|endoftext|>), '
                         f'got {context_length!r}.')
    return context_length


class CLIPTokenizer:
    """OpenAI CLIP's BPE tokenizer, as used by DINOv3's dino.txt (``open_clip``'s copy, pinned to the official
    cleaning, special tokens and truncation).

    ``tokenize`` returns ``[<|startoftext|>] + encode(text) + [<|endoftext|>]`` per text, zero-padded to the
    context length; a longer sequence is cut to ``context_length`` tokens and its last one replaced by
    ``<|endoftext|>``, so the end-of-text position (``argmax`` of the ids) always exists.

    Args:
        bpe_path (str, optional): Local path of the gzipped BPE merges file ``bpe_simple_vocab_16e6.txt.gz``.
            Defaults to the copy shipped with ``open_clip``. URLs are refused: nothing is downloaded.
        context_length (int): Default number of tokens per text. Defaults to 77.

    Raises:
        FileNotFoundError: ``bpe_path`` does not exist.
        ValueError: ``bpe_path`` is a URL or not a gzipped CLIP merges file, or ``context_length`` < 2.
    """

    def __init__(self, bpe_path: Optional[str] = None, context_length: int = 77) -> None:
        path = default_bpe_path() if bpe_path is None else _check_bpe_file(bpe_path)
        self._context_length = _check_context_length(context_length)
        # reduction_mask='' -> plain truncation (the official rule); clean is replaced by the official rule.
        from open_clip import tokenizer as _oc
        tok = _oc.SimpleTokenizer(bpe_path=path, context_length=self._context_length, clean='lower',
                                  reduction_mask='')
        tok.clean_fn = self.clean
        # Official special-token names and pre-tokenizer (same ids: the last two vocabulary entries).
        sot_id, eot_id = tok.all_special_ids
        for name, idx in ((SOT_TOKEN, sot_id), (EOT_TOKEN, eot_id)):
            del tok.encoder[tok.decoder[idx]]
            tok.encoder[name] = idx
            tok.decoder[idx] = name
        tok.cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        tok.pat = _OFFICIAL_PATTERN
        if len(tok.encoder) != VOCAB_SIZE or (sot_id, eot_id) != (VOCAB_SIZE - 2, VOCAB_SIZE - 1):
            raise ValueError(f'{path!r} gives a vocabulary of {len(tok.encoder)} (special ids {sot_id}, '
                             f'{eot_id}); dino.txt needs {VOCAB_SIZE} ({VOCAB_SIZE - 2}, {VOCAB_SIZE - 1}).')
        self._tok = tok
        self.bpe_path = path

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408)."""
        return len(self._tok.encoder)

    @property
    def sot_token_id(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self._tok.encoder[SOT_TOKEN]

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self._tok.encoder[EOT_TOKEN]

    @property
    def context_length(self) -> int:
        """Default number of tokens per text in :meth:`tokenize`."""
        return self._context_length

    def clean(self, text: str) -> str:
        """Text cleaning applied by :meth:`encode`; see :func:`clean_text`."""
        return clean_text(text)

    def encode(self, text: str) -> List[int]:
        """BPE token ids of one text, without start/end tokens and without truncation.

        Args:
            text (str): Raw text (cleaned with :meth:`clean` first).

        Returns:
            list[int]: Token ids.
        """
        if not isinstance(text, str):
            raise TypeError(f'text must be a str, got {type(text).__name__}.')
        return self._tok.encode(text)

    def decode(self, ids: Union[Sequence[int], torch.Tensor]) -> str:
        """Text of token ids, with the start token, the end token and the padding after it removed.

        Decoding stops at the first ``<|endoftext|>``; without one, trailing zeros are taken as padding (id 0,
        ``!`` inside a word, can never end an encoded text). Words are separated by single spaces, so
        punctuation comes back space-separated (``'a cat.'`` -> ``'a cat .'``).

        Args:
            ids (Sequence[int] | torch.Tensor): One sequence of token ids (1-D).

        Returns:
            str: The decoded text, stripped.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f'decode takes one 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}.')
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.sot_token_id:
            ids = ids[1:]
        if self.eot_token_id in ids:
            ids = ids[:ids.index(self.eot_token_id)]
        else:
            while ids and ids[-1] == 0:
                ids.pop()
        bad = [i for i in ids if i not in self._tok.decoder]
        if bad:
            raise ValueError(f'token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}).')
        return self._tok.decode(ids).strip()

    def tokenize(self, texts: Union[str, Sequence[str]],
                 context_length: Optional[int] = None) -> torch.LongTensor:
        """Token ids of a batch of texts, as the dino.txt text tower reads them.

        Args:
            texts (str | Sequence[str]): One text or a non-empty sequence of texts (an empty string is allowed).
            context_length (int, optional): Tokens per text. Defaults to :attr:`context_length`.

        Returns:
            torch.LongTensor: ``(N, context_length)`` ids: ``[sot] + encode(text) + [eot]``, zero-padded; a
            longer sequence is truncated to ``context_length`` with its last token set to ``eot``.

        Raises:
            TypeError: ``texts`` is not a str or a sequence of str (names the first bad index).
            ValueError: ``texts`` is empty or ``context_length`` < 2.
        """
        ctx = self._context_length if context_length is None else _check_context_length(context_length)
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise TypeError(f'texts must be a str or a sequence of str, got {type(texts).__name__}.')
        texts = list(texts)
        if not texts:
            raise ValueError('texts is empty: pass at least one string (an empty string "" is allowed).')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f'texts[{i}] is a {type(text).__name__}, expected str.')
        return self._tok(texts, context_length=ctx)

    __call__ = tokenize

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(bpe_path={self.bpe_path!r}, context_length={self._context_length}, '
                f'vocab_size={self.vocab_size})')
