//! The client frame parser: any bytes, however a read cuts them, give the same messages and the
//! same verdict as when they arrive at once, and nothing over the size cap is ever handed over.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wscast::reader::{FrameError, Incoming, Parser};

const MAX: usize = 4096;

fn parse(pieces: &[&[u8]]) -> (Vec<Incoming>, Result<(), FrameError>) {
    let mut parser = Parser::new(MAX);
    let mut got = Vec::new();
    for piece in pieces {
        if let Err(e) = parser.absorb(piece, &mut |i| got.push(i)) {
            return (got, Err(e));
        }
    }
    (got, Ok(()))
}

fuzz_target!(|input: &[u8]| {
    let [a, b, data @ ..] = input else { return };
    let first = usize::from(*a) * data.len() / 256;
    let second = first + (data.len() - first) * usize::from(*b) / 256;
    let whole = parse(&[data]);
    let cut = parse(&[&data[..first], &data[first..second], &data[second..]]);
    assert_eq!(whole, cut, "cut at {first} and {second}");
    for incoming in &whole.0 {
        match incoming {
            Incoming::Text(t) => assert!(t.len() <= MAX),
            Incoming::Binary(b) => assert!(b.len() <= MAX),
            Incoming::Ping(p) => assert!(p.len() <= 125),
            Incoming::Pong | Incoming::Close(_) => {}
        }
    }
});
