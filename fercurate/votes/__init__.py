"""Annotator votes: FER+'s ten votes per image, attached to rows and used to judge labels.

FER+ re-annotated every FER2013 image with about ten votes over neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown and not-a-face (NF). Votes tell apart what one
label conflates: a face people disagree on (*ambiguous*) and a label that is simply *wrong*.

* ``ferplus``: strict readers of ``label.csv`` and ``fer2013new.csv`` (errors name file and line);
* ``stats``: vote statistics and the label schemes (pure);
* ``match``: FER+ images to rows by pixels (pure);
* ``stage``: ``fercurate votes import`` (read a version, attach votes, commit);
* ``scan``: the FER+ release layout as a dataset for ``fercurate scan``;
* ``flagging``: wrong / ambiguous flags from votes, alone or combined with the model's.

Columns (declared with the schema in :mod:`fercurate.manifest`; null on rows without votes):
``votes_<FER+ class>`` counts (``votes_neutral`` ... ``votes_nf``), ``vote_n``, ``vote_majority`` (the
dataset class the votes pick under the scheme, or null), ``vote_agreement`` (share of the votes
the most-voted FER+ class got), ``vote_entropy`` (bits, over the ten classes), ``vote_image`` (FER+'s
name), ``vote_match`` (``row`` or ``pixels``), ``vote_match_distance`` / ``vote_match_margin``.

Schemes (``--scheme``), after pooling votes into one bin per dataset class (``--map`` folds FER+
names onto dataset classes) and one per FER+ class the dataset lacks:

* ``majority`` (default, FER+'s own): the bin with more than half of the votes;
* ``plurality``: the most-voted bin, ``unknown`` and ``NF`` set aside; a tie keeps the row's label
  when it is among the tied, else the first tied class;
* ``drop``: the most-voted bin over all votes; nothing on a tie.

A winning bin that is no dataset class (``unknown``, ``NF``, or e.g. ``anger`` in a four-class set)
picks no label in every scheme.
"""

from fercurate.votes.match import Matches, match_images
from fercurate.votes.params import FERPLUS_CLASSES, SCHEMES, VotesParams
from fercurate.votes.stage import VotesResult, import_votes
from fercurate.votes.stats import class_map, scheme_labels, vote_distribution

__all__ = [
    "FERPLUS_CLASSES",
    "SCHEMES",
    "Matches",
    "VotesParams",
    "VotesResult",
    "class_map",
    "import_votes",
    "match_images",
    "scheme_labels",
    "vote_distribution",
]
