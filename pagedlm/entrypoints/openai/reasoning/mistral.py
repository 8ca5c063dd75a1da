"""Mistral (Magistral): ``[THINK]...[/THINK]`` then the answer; the markers are special (control)
tokens, so this parser keeps special tokens in the text (``skip_special_tokens`` false).

As vLLM's ``mistral``: the reasoning is what lies between ``[THINK]`` and ``[/THINK]`` (to the
end if the block is not closed); the content is the text before ``[THINK]`` and after
``[/THINK]``; without ``[THINK]`` it is all content, a stray ``[/THINK]`` dropped. The prompt
does not matter (Magistral's system prompt shows the markers itself). Where vLLM's reply keeps
a stray ``[/THINK]`` written before ``[THINK]``, it is dropped here too, as a stream must.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser, partial_suffix


class MistralReasoningParser(ReasoningParser):
    start_token = "[THINK]"
    end_token = "[/THINK]"
    keep_special_tokens = True

    def initial_mode(self, prompt_text: str) -> Mode:
        return Mode.UNDECIDED

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        start = text.find(self.start_token)
        before = text if start < 0 else text[:start]
        if start < 0 and not final:
            before = before[:len(before) - max(partial_suffix(before, self.start_token),
                                               partial_suffix(before, self.end_token))]
        before = before.replace(self.end_token, "", 1)
        if start < 0:
            return None, before or None
        body = text[start + len(self.start_token):]
        end = body.find(self.end_token)
        if end < 0:
            if not final:
                body = body[:len(body) - partial_suffix(body, self.end_token)]
            return body or None, before or None
        return body[:end] or None, (before + body[end + len(self.end_token):]) or None
