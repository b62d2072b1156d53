"""Settings chosen on the dev split of the log being trained on: retrieval (:mod:`.retrieval`) and ranker
(:mod:`.ranker`) searches within a time budget (:mod:`.search`), configured by :mod:`.config`, recorded in the
model's ``selection.json`` (:mod:`.record`)."""
