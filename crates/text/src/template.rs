//! `{column}` templates: the `[input] text` template over columns and zero-shot prompts.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Literal(String),
    /// A `{name}` placeholder.
    Field(String),
}

/// A parsed template; `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Pieces in order.
    pub pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; an unclosed or empty `{}` is an error naming the position.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((pos, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, ch)) => name.push(ch),
                            None => return Err(format!("`{{` at byte {pos} is never closed (write `{{{{` for a literal brace)")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` at byte {pos}"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => {
                    return Err(format!(
                        "`}}` at byte {pos} has no opening `{{` (write `}}}}` for a literal brace)"
                    ))
                }
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template { pieces })
    }

    /// Names of the placeholders, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Field(f) = p {
                if !out.contains(&f.as_str()) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Whether the template is exactly one placeholder.
    pub fn single_field(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Field(f)] => Some(f),
            _ => None,
        }
    }

    /// Renders with `value(name)` for each placeholder.
    pub fn render<'a>(&self, mut value: impl FnMut(&str) -> &'a str) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => out.push_str(l),
                Piece::Field(f) => out.push_str(value(f)),
            }
        }
        out
    }

    /// The literal text before the first placeholder `name`, and after it.
    pub fn around(&self, name: &str) -> Option<(String, String)> {
        let idx = self
            .pieces
            .iter()
            .position(|p| matches!(p, Piece::Field(f) if f == name))?;
        let join = |ps: &[Piece]| {
            ps.iter()
                .map(|p| match p {
                    Piece::Literal(l) => l.as_str(),
                    Piece::Field(_) => "",
                })
                .collect::<String>()
        };
        Some((join(&self.pieces[..idx]), join(&self.pieces[idx + 1..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_literals_and_escapes() {
        let t = Template::parse("{title}\n\n{ body }{{x}}").unwrap();
        assert_eq!(t.fields(), ["title", "body"]);
        assert_eq!(
            t.render(|f| if f == "title" { "T" } else { "B" }),
            "T\n\nB{x}"
        );
        assert_eq!(Template::parse("text").unwrap().single_field(), None);
        assert_eq!(
            Template::parse("{text}").unwrap().single_field(),
            Some("text")
        );
    }

    #[test]
    fn reports_unbalanced_braces() {
        assert!(Template::parse("{oops")
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("a } b").unwrap_err().contains("no opening"));
        assert!(Template::parse("{}").unwrap_err().contains("empty"));
    }

    #[test]
    fn splits_around_a_field() {
        let t = Template::parse("{text} Overall, it was a [MASK] experience.").unwrap();
        assert_eq!(
            t.around("text").unwrap(),
            (
                String::new(),
                " Overall, it was a [MASK] experience.".into()
            )
        );
    }
}
