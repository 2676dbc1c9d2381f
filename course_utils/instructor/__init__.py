"""The instructor's side of the `course` command: release labs (release), grade submissions (grading),
execute notebooks (runner), check a machine (doctor); notebooks holds the plumbing they share.
Notebooks never import from here."""
