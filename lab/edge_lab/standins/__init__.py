"""Stand-ins for the macOS commands the collection and the relay call.

One module per command, each with a ``main()`` that reads ``sys.argv``, so the lab can
place it where macOS keeps the real command (``/usr/sbin/sysadminctl``, ``/usr/bin/dscl``,
...). They work on the files of the host they run in, or under ``$EDGE_LAB_ROOT``.
"""
