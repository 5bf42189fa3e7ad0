"""Building an MMAD-format benchmark from a labelled image tree."""
