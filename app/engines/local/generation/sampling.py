"""One reply's next token from its logits, as `generate` would pick it, on its own generator.

Each reply in a batch is sampled on its own: its processors see only its own ids, and a seeded
reply draws from a generator of its own, so what it gets does not depend on who else is in the
batch (with `generate`, a seed set the global generator for everyone)."""

from __future__ import annotations

from typing import Any

from app.engines.local.generation.internals import SamplingPlan


class RowSampler:
    """The tokens of one reply: its prompt and what was picked so far, and the next pick."""

    def __init__(self, plan: SamplingPlan, prompt_ids: list[int], seed: int | None) -> None:
        import torch

        self.plan = plan
        self.ids = list(prompt_ids)
        self.prompt_tokens = len(prompt_ids)
        self._generator: Any = None
        if plan.do_sample:
            self._generator = torch.Generator()
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(seed)

    @property
    def made(self) -> int:
        """Tokens picked so far."""
        return len(self.ids) - self.prompt_tokens

    def pick(self, logits: Any) -> int:
        """The next token for `logits` (1, vocabulary), float32; it joins the reply."""
        import torch

        ids = torch.tensor([self.ids], dtype=torch.long, device=logits.device)
        scores = self.plan.processors(ids, logits)
        if self.plan.do_sample:
            token = self._draw(torch.nn.functional.softmax(scores, dim=-1)[0].cpu())
        else:
            token = int(torch.argmax(scores, dim=-1)[0])
        self.ids.append(token)
        return token

    def _draw(self, probs: Any) -> int:
        """A token drawn from `probs` (vocabulary,), among those top-k and top-p left: drawn
        from all, `torch.multinomial` draws a random number for every token of the vocabulary
        (3 ms a token for Qwen's 151,936 on a CPU, once per reply in a batch, for nothing: a
        token of probability 0 is never drawn). The same distribution; the same seed gives the
        same reply, though not the one it gave before this change."""
        import torch

        kept = (probs > 0).nonzero().squeeze(1)
        drawn = torch.multinomial(probs[kept], 1, generator=self._generator)
        return int(kept[drawn[0]])

    def finished(self) -> bool:
        """The reply ended: an end token, or as long as it may be."""
        ended = self.made > 0 and self.ids[-1] in self.plan.end_tokens
        return ended or self.made >= self.plan.max_new_tokens
