"""Where documents come from: one module per `data.kind`, each a stored (TFDS array_record) source.

A source module has `TEXT` (True: a record is a whole file to cut into rows; False: a record is
one document), `sources(data_spec, tokenizer) -> {name: {split: data source}}` building what is
missing, and `validate(data_spec)` raising one-line errors. To add a source: a module here and
an entry below.
"""

from nopejax.data.sources import passkey, tasks, text

SOURCES = {"tasks": tasks, "text": text, "passkey": passkey}
