"""The two kinds of error a user can see: one line each, never a traceback.

`UsageError` is the user's input being wrong (a bad option value, a missing file, a folder that is
not a GPT-2 checkpoint): exit status 2. `ChatbotError` is work that failed (an export that does not
match PyTorch, a corrupt export): exit status 1. The CLI catches both at the top and prints the
message; library code raises them with a message that names the problem and what to do.
"""


class ChatbotError(Exception):
    exit_code = 1


class UsageError(ChatbotError):
    exit_code = 2


class PromptTooLong(UsageError):
    """A prompt that does not fit the model's context, with truncation off."""

    row = 0  # which prompt of the call that raised it
