"""Running the data-parallel stages on a Dask cluster (``--cluster``); no option keeps the single-process path.

* :mod:`recsys.cluster.connect`   ``ClusterConfig`` and the ``distributed.Client`` it opens (local or existing)
* :mod:`recsys.cluster.partition` rows split by a stable user hash, written as partitioned Parquet
* :mod:`recsys.cluster.features`  the feature collector run per partition on the workers
* :mod:`recsys.cluster.ranker`    the lambdarank ranker with ``lightgbm.dask.DaskLGBMRanker``
* :mod:`recsys.cluster.recommend` batch recommend per user partition, published as one file
* :mod:`recsys.cluster.session`   what ``train`` and ``recommend`` call: on the cluster when there is one, else in process

Dask (``pip install 'recsys[cluster]'``) is imported only when a cluster is asked for.
"""
