"""The one error of bad input: :class:`ConfigError`, naming the key, the value and what is allowed.

Every "invalid <what>: key=value; allowed: ..." refusal of the package is a :class:`ConfigError`
or a subclass of it (a training config, a profile, a sweep YAML, a schedule control, the synthetic
check's config, the GPU check's results file, the authors' reference CSV), built by
:meth:`ConfigError.of`, the one place that writes that sentence. A subclass names its subject
(``invalid profile: ...``) and stays importable where callers catch it.

Imports only the standard library: the GPU check's results module uses it before it knows which
packages the machine has.
"""

from __future__ import annotations

from typing import Any, Optional

UNKNOWN = object()  # a value that cannot be shown: ConfigError.of writes "key=?"
NOT_SET = object()  # a key that is not set at all: ConfigError.of writes "no key"


class ConfigError(ValueError):
    """An input is not allowed; the message says which key, which value and what is allowed.

    Built by :meth:`of` for one key's value (then ``key``, ``value`` and ``allowed`` are set);
    constructed from a sentence for a fault of a whole file or setting (a YAML syntax error, a
    ``base`` cycle), where they are None.
    """

    subject = "config"  # what is invalid, the message's first words: "invalid config: ..."
    key: Optional[str] = None
    value: Any = None
    allowed: Optional[str] = None

    @classmethod
    def of(cls, key: str, value: Any, allowed: str, what: str = "", subject: Optional[str] = None) -> ConfigError:
        """``invalid <subject>: [what ]key=value; allowed: allowed``.

        Args:
            key: the key at fault, as the user writes it (``method.delta``, ``experiments[0].seeds``).
            value: the value given, written as its ``repr``; :data:`UNKNOWN` writes ``?``,
                :data:`NOT_SET` writes ``no key`` instead of ``key=value``.
            allowed: what the key allows (a sentence, or names joined by `` | ``).
            what: words before the key (``unknown key``, ``command sets``).
            subject: what is invalid, with where it is (``sweep configs/sweeps/x.yaml``); default:
                the class's :attr:`subject`.
        Returns:
            An instance of ``cls`` with ``key``, ``value`` and ``allowed`` set (raise it).
        """
        if value is NOT_SET:
            said = f"no {key}"
        else:
            said = f"{key}={'?' if value is UNKNOWN else repr(value)}"
        err = cls(f"invalid {subject or cls.subject}: {what + ' ' if what else ''}{said}; allowed: {allowed}")
        err.key, err.value, err.allowed = key, value, allowed
        return err

    def where(self, context: str, cls: Optional[type] = None) -> ConfigError:
        """This error said with ``context: `` in front (which run, which sweep point), as ``cls``
        (default this error's class), with ``key``, ``value`` and ``allowed`` kept.

        Returns:
            A new error (raise it ``from None``: the context says where, the message what).
        """
        err = (cls or type(self))(f"{context}: {self}")
        err.key, err.value, err.allowed = self.key, self.value, self.allowed
        return err
