"""ImageBind-Huge text tower (OpenCLIP-H text: causal transformer, EOS pooling) and the CLIP BPE
tokenizer, for the paper preset's prompt text features. Loads the official checkpoint's key layout;
the BPE file (``bpe_simple_vocab_16e6.txt.gz``, shipped with ImageBind) is a user path.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.model.imagebind import _Block

PRE = "modality_preprocessors.text."
TRUNK = "modality_trunks.text."
HEAD = "modality_heads.text."
# Official key -> ours; blocks keep their names under TRUNK. The causal mask buffer and the logit
# scale are not needed (the prompt features are re-normalised after averaging).
KEY_MAP = {
    PRE + "token_embedding.weight": "token_embedding.weight",
    PRE + "pos_embed": "pos_embed",
    HEAD + "proj.0.weight": "head_ln.weight",
    HEAD + "proj.0.bias": "head_ln.bias",
    HEAD + "proj.1.weight": "head_proj.weight",
}
IGNORED = (PRE + "mask", "modality_postprocessors.text.")


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """Reversible byte -> printable character map of byte-level BPE: printable bytes map to
    themselves and come first, the rest map to code points from 256 up."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}  # order matters: it is the order of the base vocabulary
    others = [b for b in range(256) if b not in table]
    table |= {b: chr(256 + n) for n, b in enumerate(others)}
    return table


class ClipBPETokenizer:
    """CLIP's lower-cased byte-level BPE with <|startoftext|>/<|endoftext|>, context 77, zero padding."""

    # \p{L}+ and \p{N} written with the stdlib: letters = word chars that are not digits or "_".
    _split = re.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE
    )

    def __init__(self, bpe_path: str | Path, context_length: int = 77) -> None:
        path = Path(bpe_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.text_bpe: no CLIP BPE file at {path}")
        with gzip.open(path) as fh:
            lines = fh.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1] if line.strip()]
        alphabet = list(_byte_alphabet().values())
        vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self.context_length = context_length
        self.vocab_size = len(vocab)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one tokenizer per process; words repeat)
    def _bpe(self, word: str) -> tuple[str, ...]:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [
                (self.ranks.get((a, b), float("inf")), i)
                for i, (a, b) in enumerate(itertools.pairwise(parts))
            ]
            rank, best = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()
        alphabet = _byte_alphabet()
        ids: list[int] = []
        for token in self._split.findall(text):
            word = "".join(alphabet[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(word))
        return ids

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot][: self.context_length]
            out[row, : len(tokens)] = torch.tensor(tokens)
        return out


class ImageBindTextEncoder(nn.Module):
    """Token + position embeddings, causal pre-norm blocks, the EOS token -> LayerNorm -> Linear -> L2."""

    def __init__(
        self, vocab: int, width: int, depth: int, heads: int, out_dim: int, context: int = 77
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, width))
        self.blocks = nn.ModuleList(_Block(width, heads, 4 * width) for _ in range(depth))
        self.head_ln = nn.LayerNorm(width, eps=1e-6)
        self.head_proj = nn.Linear(width, out_dim, bias=False)
        causal = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.out_dim = out_dim

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) CLIP token ids -> (B, out_dim) unit vectors."""
        x = self.token_embedding(tokens) + self.pos_embed[:, : tokens.shape[1]]
        mask = self.causal_mask[: tokens.shape[1], : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        eos = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # EOT has the largest id
        return F.normalize(self.head_proj(self.head_ln(eos)), dim=-1)

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], heads: int = 16, source: str = ""
    ) -> ImageBindTextEncoder:
        text = {
            k: v for k, v in state.items() if k.startswith((PRE, TRUNK, HEAD)) and not k.startswith(IGNORED)
        }
        if PRE + "token_embedding.weight" not in text:
            raise KeyError(f"{source}: no ImageBind text weights ({PRE}token_embedding.weight missing)")
        vocab, width = text[PRE + "token_embedding.weight"].shape
        depth = 1 + max(
            int(k[len(TRUNK) + 7 :].split(".")[0]) for k in text if k.startswith(TRUNK + "blocks.")
        )
        context = text[PRE + "pos_embed"].shape[1]
        out_dim = text[HEAD + "proj.1.weight"].shape[0]
        if width % heads:
            raise ValueError(f"{source}: text width {width} is not divisible by encoder.heads={heads}")
        model = cls(vocab, width, depth, heads, out_dim, context)
        ours = {KEY_MAP.get(k, k[len(TRUNK) :] if k.startswith(TRUNK) else k): v for k, v in text.items()}
        missing, unexpected = model.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"{source}: ImageBind text keys do not match; "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()
