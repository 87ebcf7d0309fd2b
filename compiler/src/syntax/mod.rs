//! The pest grammar and the AST. FRONTEND HELPER: implement.
