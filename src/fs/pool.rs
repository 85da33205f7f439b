//! A fixed set of worker threads for reads that may wait on the network.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(size: usize) -> Self {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..size.max(1))
            .filter_map(|i| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("read-{i}"))
                    .spawn(move || {
                        loop {
                            let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        }
                    })
                    .map_err(|e| tracing::error!(error = %e, "cannot start a read worker"))
                    .ok()
            })
            .collect();
        Self {
            sender: Some(sender),
            workers,
        }
    }

    /// Runs `job` on a worker; if none is left, on the caller's thread.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        match self.sender.as_ref().map(|s| s.send(job)) {
            Some(Ok(())) => {}
            Some(Err(returned)) => (returned.0)(),
            None => {}
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
