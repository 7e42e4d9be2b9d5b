//! The command line of every subcommand: one reader for `--flag value`, `--flag=value`, help
//! flags and words, typed values whose errors name the flag and what it takes, and one exit
//! code for every usage error.
//!
//! A subcommand's parser walks the arguments with [`Flags`] and returns [`Parsed`]: `Help`
//! (print the usage, exit 0) or what to run. `main.rs` turns a [`UsageError`] into
//! `avr-core <command>: <error>` on stderr and [`USAGE_EXIT_CODE`].

use std::fmt;
use std::str::FromStr;

/// The exit status of a command line that cannot be run (unknown flag, missing or bad
/// value): 2, the convention of getopt-based tools, so scripts can tell "you called me wrong"
/// from "I ran and it failed" (1).
pub const USAGE_EXIT_CODE: u8 = 2;

/// What a command line asked for.
#[derive(Debug, PartialEq)]
pub enum Parsed<T> {
    /// `-h`, `--help` (or `help` where a command word is expected): print the usage.
    Help,
    Run(T),
}

/// Why a command line cannot be run. The text names the argument and what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// `--flag` was the last argument.
    MissingValue {
        flag: String,
        expected: String,
    },
    /// `--flag value` where the value is not what the flag takes.
    BadValue {
        flag: String,
        value: String,
        expected: String,
    },
    /// `--switch=value` for a flag that takes no value.
    UnexpectedValue {
        flag: String,
    },
    /// An argument the command does not take; `hint` lists what it does take (may be empty).
    Unknown {
        arg: String,
        hint: &'static str,
    },
    /// A command word that does not exist, or none where one is needed.
    UnknownCommand {
        word: String,
        expected: &'static str,
    },
    MissingCommand {
        expected: &'static str,
    },
    /// A rule across flags, or a value that names a file that cannot be used; the text
    /// names the flags.
    Invalid(String),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::MissingValue { flag, expected } => {
                write!(f, "{flag} needs a value: {expected}")
            }
            UsageError::BadValue {
                flag,
                value,
                expected,
            } => write!(f, "{flag}: {value:?} is not {expected}"),
            UsageError::UnexpectedValue { flag } => write!(f, "{flag} takes no value"),
            UsageError::Unknown { arg, hint } => {
                let what = if arg.starts_with('-') {
                    "unknown option"
                } else {
                    "unexpected argument"
                };
                write!(f, "{what} {arg:?}")?;
                if !hint.is_empty() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            UsageError::UnknownCommand { word, expected } => {
                write!(f, "unknown command {word:?} (expected {expected})")
            }
            UsageError::MissingCommand { expected } => {
                write!(f, "a command is needed: {expected}")
            }
            UsageError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for UsageError {}

/// `-h` or `--help`.
pub fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help")
}

/// A command line read one argument at a time. [`next_arg`](Self::next_arg) gives the flag
/// part of each argument (`--seconds` of `--seconds=5`) or a whole word; the value methods
/// then take the current flag's value: its inline `=` part, else the next argument.
pub struct Flags<'a> {
    rest: std::slice::Iter<'a, String>,
    /// The current argument, whole.
    arg: &'a str,
    /// Its flag part and inline value.
    flag: &'a str,
    inline: Option<&'a str>,
}

impl<'a> Flags<'a> {
    pub fn new(args: &'a [String]) -> Self {
        Flags {
            rest: args.iter(),
            arg: "",
            flag: "",
            inline: None,
        }
    }

    /// The next argument's flag part, or the whole argument when it is not a `--flag=value`;
    /// `None` at the end.
    pub fn next_arg(&mut self) -> Option<&'a str> {
        let arg = self.rest.next()?.as_str();
        (self.flag, self.inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg, None),
        };
        self.arg = arg;
        Some(self.flag)
    }

    /// The current argument as given (a file name keeps its `=`).
    pub fn arg(&self) -> &'a str {
        self.arg
    }

    /// The arguments after the current one: a subcommand's own command line.
    pub fn rest(&self) -> &'a [String] {
        self.rest.as_slice()
    }

    /// The current flag's value; `expected` says what it takes, for the error.
    pub fn value(&mut self, expected: &str) -> Result<&'a str, UsageError> {
        match self.inline.take() {
            Some(v) => Ok(v),
            None => self
                .rest
                .next()
                .map(String::as_str)
                .ok_or_else(|| UsageError::MissingValue {
                    flag: self.flag.into(),
                    expected: expected.into(),
                }),
        }
    }

    /// The value converted by `convert`; `None` from it is a [`UsageError::BadValue`].
    pub fn value_as<T>(
        &mut self,
        expected: &str,
        convert: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, UsageError> {
        let value = self.value(expected)?;
        convert(value).ok_or_else(|| self.bad_value(value, expected))
    }

    /// The value parsed as a `T` (an IP address, a port, …).
    pub fn parse<T: FromStr>(&mut self, expected: &str) -> Result<T, UsageError> {
        self.value_as(expected, |v| v.parse().ok())
    }

    /// A whole number from 0 to `max`; the error says the range.
    pub fn number(&mut self, expected: &str, max: u64) -> Result<u64, UsageError> {
        let expected = format!("{expected} (0 to {max})");
        self.value_as(&expected, |v| v.parse().ok().filter(|n| *n <= max))
    }

    /// For a flag that takes no value: an inline one (`--no-transcripts=1`) is an error.
    pub fn switch(&self) -> Result<(), UsageError> {
        match self.inline {
            None => Ok(()),
            Some(_) => Err(UsageError::UnexpectedValue {
                flag: self.flag.into(),
            }),
        }
    }

    /// A [`UsageError::BadValue`] for the current flag.
    pub fn bad_value(&self, value: &str, expected: &str) -> UsageError {
        UsageError::BadValue {
            flag: self.flag.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// The current argument is not one the command takes; `hint` says what it takes.
    pub fn unknown(&self, hint: &'static str) -> UsageError {
        UsageError::Unknown {
            arg: self.arg.into(),
            hint,
        }
    }
}

/// For commands without options: `--help`, or nothing.
pub fn no_options(args: &[String], hint: &'static str) -> Result<Parsed<()>, UsageError> {
    let mut flags = Flags::new(args);
    match flags.next_arg() {
        None => Ok(Parsed::Run(())),
        Some(arg) if is_help(arg) => Ok(Parsed::Help),
        Some(_) => Err(flags.unknown(hint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_values_inline_values_and_words() {
        let line = args("--a 1 --b=2=3 word --c= --d");
        let mut flags = Flags::new(&line);
        assert_eq!(flags.next_arg(), Some("--a"));
        assert_eq!(flags.value("x"), Ok("1"));
        assert_eq!(flags.next_arg(), Some("--b"));
        assert_eq!(flags.arg(), "--b=2=3");
        assert_eq!(flags.value("x"), Ok("2=3"));
        assert_eq!(flags.next_arg(), Some("word"));
        assert_eq!(flags.rest(), &line[4..]);
        assert_eq!(flags.next_arg(), Some("--c"));
        assert_eq!(flags.value("x"), Ok(""), "an empty inline value is a value");
        assert_eq!(flags.next_arg(), Some("--d"));
        assert_eq!(
            flags.value("a port").unwrap_err().to_string(),
            "--d needs a value: a port"
        );
        assert_eq!(flags.next_arg(), None);

        // Only `--` arguments split at `=`: a word such as a file name stays whole.
        let line = args("a=b -x=1");
        let mut flags = Flags::new(&line);
        assert_eq!(flags.next_arg(), Some("a=b"));
        assert_eq!(flags.next_arg(), Some("-x=1"));
    }

    #[test]
    fn typed_values_name_the_flag_and_what_it_takes() {
        let line = args("--port 70000 --port=80 --bind nowhere --n 7 --n 8 --on=yes --on");
        let mut flags = Flags::new(&line);
        flags.next_arg();
        let e = flags.parse::<u16>("a port 0-65535").unwrap_err();
        assert_eq!(e.to_string(), r#"--port: "70000" is not a port 0-65535"#);
        flags.next_arg();
        assert_eq!(flags.parse::<u16>("a port"), Ok(80));
        flags.next_arg();
        let e = flags
            .parse::<std::net::IpAddr>("an IP address")
            .unwrap_err();
        assert_eq!(
            e,
            UsageError::BadValue {
                flag: "--bind".into(),
                value: "nowhere".into(),
                expected: "an IP address".into()
            }
        );
        flags.next_arg();
        assert_eq!(flags.number("calls", 7), Ok(7));
        flags.next_arg();
        let e = flags.number("calls", 7).unwrap_err().to_string();
        assert_eq!(e, r#"--n: "8" is not calls (0 to 7)"#);
        flags.next_arg();
        assert_eq!(
            flags.switch().unwrap_err().to_string(),
            "--on takes no value"
        );
        flags.next_arg();
        assert_eq!(flags.switch(), Ok(()));
    }

    #[test]
    fn unknown_arguments_and_commands() {
        let line = args("--bogus stray");
        let mut flags = Flags::new(&line);
        flags.next_arg();
        assert_eq!(
            flags.unknown("expected --a").to_string(),
            r#"unknown option "--bogus" (expected --a)"#
        );
        flags.next_arg();
        assert_eq!(
            flags.unknown("").to_string(),
            r#"unexpected argument "stray""#
        );
        let e = UsageError::UnknownCommand {
            word: "frob".into(),
            expected: "test or replay",
        };
        assert_eq!(
            e.to_string(),
            r#"unknown command "frob" (expected test or replay)"#
        );
        let e = UsageError::MissingCommand {
            expected: "test or replay",
        };
        assert_eq!(e.to_string(), "a command is needed: test or replay");
    }

    #[test]
    fn commands_without_options() {
        assert_eq!(no_options(&[], "none"), Ok(Parsed::Run(())));
        assert_eq!(no_options(&args("-h"), "none"), Ok(Parsed::Help));
        assert_eq!(no_options(&args("--help x"), "none"), Ok(Parsed::Help));
        let e = no_options(&args("--bogus"), "it takes no options").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown option "--bogus" (it takes no options)"#
        );
        assert!(is_help("--help") && is_help("-h") && !is_help("help"));
    }
}
