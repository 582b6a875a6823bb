// The second Express major and the router versions, installed under npm aliases
// so that one checkout tests Express 4 and 5 and router 2.2 and 2.3.
declare module 'express4' {
  import express from 'express';
  export default express;
}
declare module 'router22' {
  const Router: (options?: object) => import('express').Router;
  export default Router;
}
declare module 'router23' {
  const Router: (options?: object) => import('express').Router;
  export default Router;
}
