"""Language: from a request in words to class indices, and from class sets to the text the generator reads.

Modules, bottom to top: `words` (stop words, number words), `vocabulary` (class names, synonyms, groups),
`text` (the sentence encoder, loaded lazily), `descriptions` (how a class set is phrased for text conditioning),
`grounding` (a request -> classes, lexically first, by embedding only when needed).

Imports: the package root (`info`, `io`, `config`) only. Nothing here imports torch at module level, so that
`hypersan resolve` answers lexical requests without it.
"""
