"""Where documents come from: one module per `data.kind`, each a stored (TFDS array_record) source.

A source module has `TEXT` (True: documents are cut into windows of seq_len + 1 tokens; False:
a document is one example, refused or cut when longer), `documents(data_spec, tokenizer, split)
-> [nopejax.data.documents.Documents]` building what is missing, `weights(data_spec)` (mixture
weights of those parts, or None) and `validate(data_spec)` raising one-line errors. To add a
source: a module here and an entry below.
"""

from nopejax.data.sources import passkey, tasks, text

SOURCES = {"tasks": tasks, "text": text, "passkey": passkey}
