//! Rule files: model, parser and validator (in progress).
