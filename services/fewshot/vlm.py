"""MedStack's small chest vision–language model (the ``chest-vlm`` encoder's two towers).

* Image tower: the frozen ``chest`` encoder (the report family's visual path, 224-d) → MLP 224→256→256 →
  unit vector in the 256-d joint space.
* Text tower: frozen all-MiniLM-L6-v2 (mean-pooled, unit 384-d sentence embedding) → linear 384→256 → unit vector.
* Trained here (``train_vlm.py``) contrastively on rendered radiographs paired with their Open-i reports
  (training split only); only the two projections and the temperature learn.

    tower = load_image_tower()               # (image (B,1,128,128), prompt) → (B, 256) unit vectors
    text = load_text_tower()
    text.embed(["findings : there is pleural effusion"])   # (1, 256) unit vectors

The few-shot text methods (``text_methods.py``) score with class embeddings in the joint space.
"""

from __future__ import annotations

import json
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from services.fewshot.encoders import vlm_checkpoint
from services.fewshot.networks import ChestEncoder, load_chest

JOINT_DIM = 256
TEXT_DIM = 384
IMAGE_DIM = 224
PROMPT_PREFIX = "findings : there is"  # CoOp's context is initialised from these 4 tokens' embeddings
NEGATION = "no"


def display_name(class_name: str) -> str:
    """``pleural_effusion`` → ``pleural effusion`` (API class names are free text; underscores read as spaces)."""
    return " ".join(class_name.replace("_", " ").replace("-", " ").split()).lower()


def class_prompts(class_names: list[str], multi_label: bool) -> dict[str, list[str]]:
    """The zero-shot prompts: ``positive`` "findings : there is X" per class and, for multi-label tasks,
    ``negative`` "findings : there is no X" (a class's score contrasts the two, as reports state absences)."""
    out = {"positive": [f"{PROMPT_PREFIX} {display_name(n)}" for n in class_names]}
    if multi_label:
        out["negative"] = [f"{PROMPT_PREFIX} {NEGATION} {display_name(n)}" for n in class_names]
    return out


class ImageProjection(nn.Module):
    """``(B, 224)`` chest features → ``(B, 256)`` unit vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IMAGE_DIM, JOINT_DIM), nn.GELU(), nn.Linear(JOINT_DIM, JOINT_DIM))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(feats), dim=-1)


class VLMHeads(nn.Module):
    """What the VLM training learns: the image MLP, the text projection and the log temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.image = ImageProjection()
        self.text = nn.Linear(TEXT_DIM, JOINT_DIM)
        self.log_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))

    def text_embed(self, sentence: torch.Tensor) -> torch.Tensor:
        """``(B, 384)`` MiniLM sentence embeddings → ``(B, 256)`` unit vectors."""
        return F.normalize(self.text(sentence), dim=-1)

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp().clamp(max=100.0))


class ImageTower(nn.Module):
    """The exported ``chest-vlm`` encoder: ``image (B, 1, 128, 128)``, ``prompt`` (same) → ``(B, 256)`` unit
    joint-space embeddings."""

    def __init__(self, chest: ChestEncoder, projection: ImageProjection) -> None:
        super().__init__()
        self.chest = chest
        self.projection = projection

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.projection(self.chest(image, prompt))


@cache
def load_heads() -> VLMHeads:
    folder = vlm_checkpoint()
    if not (folder / "model.pt").exists():
        raise FileNotFoundError(f"no VLM checkpoint in {folder}: run python -m services.fewshot.train_vlm")
    heads = VLMHeads()
    heads.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    for p in heads.parameters():
        p.requires_grad_(False)
    return heads.eval()


def load_image_tower() -> ImageTower:
    return ImageTower(load_chest(), load_heads().image).eval()


def vlm_metrics() -> dict:
    path = vlm_checkpoint() / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


class TextTower:
    """Frozen MiniLM + the VLM's text projection; ``embed`` for fixed prompts, ``embed_tokens`` for CoOp (token
    embeddings in, gradients flow to them)."""

    def __init__(self) -> None:
        from services.dialogue.encoder import _loaded

        self.bert, self.tokenizer = _loaded()
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self.heads = load_heads()

    def token_ids(self, text: str) -> list[int]:
        """Word-piece ids without [CLS]/[SEP]."""
        return self.tokenizer.encode(text).ids[1:-1]

    @property
    def cls_sep(self) -> tuple[int, int]:
        ids = self.tokenizer.encode("").ids
        return ids[0], ids[-1]

    def word_embeddings(self, ids: list[int]) -> torch.Tensor:
        return self.bert.embeddings.word_embeddings.weight[torch.tensor(ids, dtype=torch.long)].detach().clone()

    def sentence(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``embeds (B, T, 384)`` token embeddings (with [CLS]/[SEP]), ``mask (B, T)`` → unit MiniLM sentence
        embeddings ``(B, 384)`` (mean over unmasked tokens, as all-MiniLM-L6-v2 pools)."""
        hidden = self.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def embed_tokens(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.heads.text_embed(self.sentence(embeds, mask))

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        from services.dialogue.encoder import encode

        return self.heads.text_embed(encode(texts))


@cache
def load_text_tower() -> TextTower:
    return TextTower()
