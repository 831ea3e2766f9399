//! `open-file` (hostile): tries to reach the filesystem.
//!
//! Opens `/etc/passwd`, lists `/` and creates the file `x`, then returns its
//! args plus `file`, `dir` and `create`, each set to the error message of
//! its attempt, or to `opened` if the attempt succeeded. Demonstrates a
//! handler reaching for files it was never given. Expected: the host grants
//! no preopened directory, so all three attempts are refused and the task
//! succeeds with the three error messages.

use std::fs::{self, File};
use std::io;

use corral_guest::{Args, Context, Error, Output, export_handler};

fn open_file(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let file = outcome(File::open("/etc/passwd"));
    let dir = outcome(fs::read_dir("/"));
    let create = outcome(File::create("x"));
    let log = format!("file: {file}; dir: {dir}; create: {create}");
    args.insert("file", &file)?;
    args.insert("dir", &dir)?;
    args.insert("create", &create)?;
    Ok(Output::new(args).log(log))
}

fn outcome<T>(result: io::Result<T>) -> String {
    match result {
        Ok(_) => "opened".to_owned(),
        Err(e) => e.to_string(),
    }
}

export_handler!(open_file);
