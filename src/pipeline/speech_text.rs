//! TEMP STUB
#[derive(Default)]
pub struct Sentences;
impl Sentences { pub fn new() -> Sentences { Sentences } pub fn push(&mut self, p: &str, out: &mut Vec<String>) { out.push(p.to_string()) } pub fn finish(&mut self, _out: &mut Vec<String>) {} }
