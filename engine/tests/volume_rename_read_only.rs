//! Renaming a volume and setting it read-only are catalog rules: names are
//! checked, uniqueness holds, and the change survives a reopen.

use sluice_engine::dev::MemDev;
use sluice_engine::lifecycle;
use sluice_engine::pool_catalog::PoolCatalog;
use sluice_engine::{Compression, Error};
use std::rc::Rc;

#[test]
fn rename_and_read_only_persist_and_check_names() {
    futures::executor::block_on(async {
        let dev = Rc::new(MemDev::new(512 << 20));
        let m = PoolCatalog::format(dev.clone(), 128 << 20, [3; 16])
            .await
            .unwrap();
        let a = m
            .create_volume("a", 1 << 30, 65536, Compression::Lz4)
            .await
            .unwrap();
        m.create_volume("b", 1 << 30, 65536, Compression::Lz4)
            .await
            .unwrap();

        let r = lifecycle::rename_volume(&m, "a", "c").await.unwrap();
        assert_eq!((r.id, r.name.as_str()), (a.id, "c"));
        assert!(matches!(
            lifecycle::rename_volume(&m, "c", "b").await,
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            lifecycle::rename_volume(&m, "c", "x/y").await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            lifecycle::rename_volume(&m, "a", "d").await,
            Err(Error::NotFound(_))
        ));
        // Same name: nothing to change, not an error.
        assert_eq!(
            lifecycle::rename_volume(&m, "c", "c").await.unwrap().name,
            "c"
        );

        let ro = lifecycle::set_read_only(&m, "b", true).await.unwrap();
        assert!(ro.read_only());
        assert!(matches!(
            lifecycle::set_read_only(&m, "zz", true).await,
            Err(Error::NotFound(_))
        ));
        drop(m);

        let m = PoolCatalog::open(dev.clone()).await.unwrap();
        assert_eq!(m.volume("c").unwrap().id, a.id);
        assert!(m.volume("a").is_err());
        assert!(m.volume("b").unwrap().read_only());
        let rw = lifecycle::set_read_only(&m, "b", false).await.unwrap();
        assert!(!rw.read_only());
        drop(m);
        let m = PoolCatalog::open(dev).await.unwrap();
        assert!(!m.volume("b").unwrap().read_only());
    });
}
