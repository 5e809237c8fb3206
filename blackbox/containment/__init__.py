"""Self-containment: what an artifact needs at load time, and making sure it needs nothing else.

The one package that knows pickles. :mod:`.serializers` is the only place in
blackbox and serving that imports ``pickle``, ``dill`` or ``cloudpickle``
(``tests/test_layout.py`` checks it); :mod:`.imports` reads a payload's opcodes
with ``pickletools`` and executes nothing. One module per concern:

* :mod:`.serializers`: dill or cloudpickle, both embedding user code by value;
* :mod:`.imports`: the globals a pickle imports, read statically;
* :mod:`.environment`: what the serving side provides; load-time environment checks;
* :mod:`.embedding`: embed user code until the payload needs nothing else, or refuse;
* :mod:`.isolation`: ``verify``, an isolated load with the caller's modules blocked
  (its child side is :mod:`._probe`, run as ``python -I -m blackbox.containment._probe``).

Internal: callers use ``blackbox.save``, ``blackbox.load`` and ``blackbox.verify``.
"""
