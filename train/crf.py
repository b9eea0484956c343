"""Linear-chain CRF log-likelihood, with pytorch-crf's parameter names and conventions.

Decoding is not here: it runs on the host through ``mner.runtime.viterbi`` (the
same code the runtime uses), so training-time evaluation and serving decode alike.
Conventions (those of pytorch-crf, so its checkpoints' parameters drop in):
a path's score is ``start[y0] + emissions[0, y0] + sum_t (transitions[y_{t-1}, y_t]
+ emissions[t, y_t]) + end[y_last]``; ``transitions[i, j]`` scores moving from i to j.
"""

from __future__ import annotations

import torch
from torch import nn

from mner.runtime.decode import CRFParameters


class CRF(nn.Module):
    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags <= 0:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pytorch-crf's initialisation
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def neg_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of -log p(tags | emissions).

        emissions (B, L, T) float; tags (B, L) int64; mask (B, L) bool/int with
        mask[:, 0] all true and every row's ones contiguous from the left.
        """
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(f"emissions must be (B, L, {self.num_tags}), got {tuple(emissions.shape)}")
        if tags.shape != emissions.shape[:2] or mask.shape != emissions.shape[:2]:
            raise ValueError(
                f"tags and mask must be {tuple(emissions.shape[:2])}, got {tuple(tags.shape)} and {tuple(mask.shape)}"
            )
        mask = mask.bool()
        if not bool(mask[:, 0].all()):
            raise ValueError("mask[:, 0] must be true for every sequence (each sequence has at least one step)")
        emissions = emissions.float()
        numerator = self._path_score(emissions, tags, mask)  # (B,)
        denominator = self._log_partition(emissions, mask)  # (B,)
        return (denominator - numerator).mean()

    def _path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = emissions.shape
        maskf = mask.to(emissions.dtype)
        batch_index = torch.arange(batch_size, device=emissions.device)
        score = self.start_transitions[tags[:, 0]] + emissions[batch_index, 0, tags[:, 0]]  # (B,)
        for t in range(1, seq_len):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[batch_index, t, tags[:, t]]
            score = score + step * maskf[:, t]
        last_index = mask.long().sum(dim=1) - 1  # (B,)
        last_tags = tags[batch_index, last_index]
        return score + self.end_transitions[last_tags]

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq_len = emissions.size(1)
        score = self.start_transitions + emissions[:, 0]  # (B, T)
        for t in range(1, seq_len):
            # (B, T, 1) + (T, T) + (B, 1, T) -> logsumexp over the previous tag
            candidate = score.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1)
            next_score = torch.logsumexp(candidate, dim=1)  # (B, T)
            score = torch.where(mask[:, t].unsqueeze(1), next_score, score)
        return torch.logsumexp(score + self.end_transitions, dim=1)

    def host_parameters(self) -> CRFParameters:
        """start, end, transitions as float32 numpy arrays: what the host decoder and crf.npz take."""
        return CRFParameters(
            start=self.start_transitions.detach().cpu().float().numpy().copy(),
            end=self.end_transitions.detach().cpu().float().numpy().copy(),
            transitions=self.transitions.detach().cpu().float().numpy().copy(),
        )
