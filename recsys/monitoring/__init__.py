"""Watching the nightly job: a reference at training time, and `recsys monitor` comparing each run with it.

* ``run.py``        a run of the model over requests: features, scores, per-source candidates, top-k lists, outcomes
* ``drift.py``      distribution summaries, PSI, normalised Wasserstein, bootstrap intervals
* ``reference.py``  ``MODEL/reference.json``: the dev split's run, summarised (the train pipeline's last stage)
* ``config.py``     :class:`MonitorConfig`, the thresholds (``[monitor]`` table of a config file)
* ``checks.py``     the five checks and their alerts
* ``report.py``     ``report.md``, its plots, ``report.html``
* ``monitor.py``    :func:`monitor`, what ``recsys monitor`` calls
"""
