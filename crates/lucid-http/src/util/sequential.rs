use std::io::Result as IoResult;
use std::io::{Read, Write};

use super::handoff::{handoff, Giver, Taker};
use std::sync::{Arc, Mutex};

use std::mem;

pub struct SequentialReaderBuilder<R>
where
    R: Read + Send,
{
    inner: SequentialReaderBuilderInner<R>,
}

enum SequentialReaderBuilderInner<R>
where
    R: Read + Send,
{
    First(R),
    NotFirst(Taker<R>),
}

pub struct SequentialReader<R>
where
    R: Read + Send,
{
    inner: SequentialReaderInner<R>,
    next: Giver<R>,
}

enum SequentialReaderInner<R>
where
    R: Read + Send,
{
    MyTurn(R),
    Waiting(Taker<R>),
    Empty,
}

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    next_trigger: Option<Taker<()>>,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    trigger: Option<Taker<()>>,
    writer: Arc<Mutex<W>>,
    on_finish: Giver<()>,
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    pub fn new(reader: R) -> SequentialReaderBuilder<R> {
        SequentialReaderBuilder {
            inner: SequentialReaderBuilderInner::First(reader),
        }
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            next_trigger: None,
        }
    }

    /// Lucid patch: blocks until every writer handed out so far has
    /// finished (been dropped), so that the next one may write at once.
    pub fn wait_for_writers(&mut self) {
        if let Some(previous) = self.next_trigger.take() {
            // A writer signals when dropped; an error would mean it is gone
            // all the same.
            let _ = previous.take();
        }
    }
}

impl<R: Read + Send> Iterator for SequentialReaderBuilder<R> {
    type Item = SequentialReader<R>;

    fn next(&mut self) -> Option<SequentialReader<R>> {
        let (tx, rx) = handoff();

        let inner = mem::replace(&mut self.inner, SequentialReaderBuilderInner::NotFirst(rx));

        match inner {
            SequentialReaderBuilderInner::First(reader) => Some(SequentialReader {
                inner: SequentialReaderInner::MyTurn(reader),
                next: tx,
            }),

            SequentialReaderBuilderInner::NotFirst(previous) => Some(SequentialReader {
                inner: SequentialReaderInner::Waiting(previous),
                next: tx,
            }),
        }
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        let (tx, rx) = handoff();
        let mut next_next_trigger = Some(rx);
        ::std::mem::swap(&mut next_next_trigger, &mut self.next_trigger);

        Some(SequentialWriter {
            trigger: next_next_trigger,
            writer: self.writer.clone(),
            on_finish: tx,
        })
    }
}

impl<R: Read + Send> Read for SequentialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.my_turn().read(buf)
    }
}

impl<R: Read + Send> SequentialReader<R> {
    /// The reader, once the readers before this one are done with it.
    fn my_turn(&mut self) -> &mut R {
        if let SequentialReaderInner::Waiting(ref mut recv) = self.inner {
            self.inner = SequentialReaderInner::MyTurn(recv.take().unwrap());
        }
        match self.inner {
            SequentialReaderInner::MyTurn(ref mut reader) => reader,
            _ => unreachable!(),
        }
    }
}

/// Lucid patch: a buffered reader stays buffered through its turn, so a
/// request head is scanned a buffer at a time instead of read byte by byte
/// through every layer (a quarter of a GET's instructions).
impl<R: std::io::BufRead + Send> std::io::BufRead for SequentialReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        self.my_turn().fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.my_turn().consume(amount)
    }
}

impl<W: Write + Send> SequentialWriter<W> {
    /// Waits until the writers before this one are done.
    fn wait_turn(&mut self) {
        if let Some(v) = self.trigger.as_mut() {
            v.take().unwrap()
        }
        self.trigger = None;
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.wait_turn();
        self.writer.lock().unwrap().write(buf)
    }

    /// Lucid patch: passed on whole (the default writes the first slice
    /// only), so a response's head and body can leave in one write.
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> IoResult<usize> {
        self.wait_turn();
        self.writer.lock().unwrap().write_vectored(bufs)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.wait_turn();
        self.writer.lock().unwrap().flush()
    }
}

impl<R> Drop for SequentialReader<R>
where
    R: Read + Send,
{
    fn drop(&mut self) {
        let inner = mem::replace(&mut self.inner, SequentialReaderInner::Empty);

        match inner {
            SequentialReaderInner::MyTurn(reader) => {
                self.next.give(reader);
            }
            SequentialReaderInner::Waiting(recv) => {
                let reader = recv.take().unwrap();
                self.next.give(reader);
            }
            SequentialReaderInner::Empty => (),
        }
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        self.on_finish.give(());
    }
}
