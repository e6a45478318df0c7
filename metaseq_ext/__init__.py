"""Deprecated aliases (one release): the metaseq / fairseq readers and consolidated.pt live in `xlbtm.formats`
(`xlbtm.formats.metaseq`, `xlbtm.formats.consolidated`); these module names keep old imports working."""
