"""The one exception type whose message is shown to the user as it is."""


class ChurnlabError(Exception):
    """A problem the user can fix: bad data, bad params, a failing notebook.

    The message names the file and the field and says what was expected and found.
    """
