"""Labels where they matter: pick what to label next from a run's uncertainty (:mod:`.suggest`)
and label it on a local slippy map (:mod:`.page`, :mod:`.server`)."""
