"""The server's batch generator: long prompts share the time with other requests.

mlx-lm 0.32.2's ``BatchGenerator._next`` runs one decode step of the requests
generating, then one chunk (``--prefill-step-size`` tokens, 2048) of every
prompt being processed. A request that arrives during a long prompt joins
that prompt's batch (its chunk then runs beside the long one's, at the long
one's cache length), and once it generates, it gets one token per chunk of
the long prompt. Measured on the 2-layer random checkpoint (2 cores, shared):
a 3-token request beside a 19,201-token prompt answered after 32 s (alone:
15 ms); the prompt's chunks took 4-11 s each at that depth.

``FairBatchGenerator`` keeps mlx-lm's steps and changes their order:

1. A request that arrives while prompts are processed gets a prompt batch of
   its own: the batch in progress is parked and resumes once the newcomers
   have moved on to generating (``_parked``, newest first).
2. While requests generate, a chunk of a prompt is followed by decode steps
   only, until they have had as much time as that chunk took: prompts get at
   most about half the time while others generate, and a short request is
   answered between two chunks of a long prompt.

Removing a request (its client left, it finished) finds it in a parked batch
too, so it never resumes.
"""

from __future__ import annotations

import importlib
import time
import weakref
from collections import deque

_mlx_generate = importlib.import_module("mlx_lm.generate")


class FairBatchGenerator(_mlx_generate.BatchGenerator):
    """mlx-lm's ``BatchGenerator`` with newcomers first and prompts interleaved with decoding."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Prompt batches put aside for newcomers: (batch, its ``_currently_processing``).
        self._parked: list[tuple] = []
        #: How long each prompt batch's last chunk took (seconds).
        self._chunk_seconds = weakref.WeakKeyDictionary()
        #: Seconds of decode-only steps since the last prompt chunk.
        self._decoded_seconds = 0.0

    def _empty_prompt_batch(self):
        return _mlx_generate.PromptProcessingBatch.empty(
            self.model, self.sampler, prefill_step_size=self.prefill_step_size
        )

    def _next(self):
        newcomers = len(self._unprocessed_sequences) > 0
        if newcomers and len(self._prompt_batch) > 0:
            self._parked.append((self._prompt_batch, self._currently_processing))
            self._prompt_batch, self._currently_processing = self._empty_prompt_batch(), []
        elif not newcomers and len(self._prompt_batch) == 0 and self._parked:
            self._prompt_batch, self._currently_processing = self._parked.pop()
        batch = self._prompt_batch
        if (len(self._generation_batch) > 0 and not newcomers and len(batch) > 0
                and self._decoded_seconds < self._chunk_seconds.get(batch, 0.0)):
            tic = time.perf_counter()
            out = self._decode_only()
            self._decoded_seconds += time.perf_counter() - tic
            return out
        tic = time.perf_counter()
        prompt_responses, generation_responses = super()._next()
        if prompt_responses:
            self._chunk_seconds[batch] = time.perf_counter() - tic
            self._decoded_seconds = 0.0
        return prompt_responses, generation_responses

    def _decode_only(self):
        """One decode step: mlx-lm's ``_next`` with the prompt work out of its sight."""
        held = self._prompt_batch, self._currently_processing, self._unprocessed_sequences
        self._prompt_batch, self._currently_processing = self._empty_prompt_batch(), []
        self._unprocessed_sequences = deque()
        try:
            return super()._next()
        finally:
            self._prompt_batch, self._currently_processing, self._unprocessed_sequences = held

    def remove(self, uids, return_prompt_caches=False):
        gone = set(uids)
        for batch, processing in self._parked:
            keep = [i for i, uid in enumerate(batch.uids) if uid not in gone]
            if len(keep) < len(batch.uids):
                batch.filter(keep)
                processing[:] = [processing[i] for i in keep]
        self._parked = [(batch, processing) for batch, processing in self._parked if len(batch)]
        return super().remove(uids, return_prompt_caches)

    @property
    def prompt_cache_nbytes(self):
        parked = sum(c.nbytes for batch, _ in self._parked for c in batch.prompt_cache)
        return super().prompt_cache_nbytes + parked
