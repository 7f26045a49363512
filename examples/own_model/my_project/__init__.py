"""An example of your own problem for ``onepass``: data (:mod:`.data`) and a model (:mod:`.model`)."""
